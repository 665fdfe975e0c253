//! Property tests of the framing: every message survives encode/decode,
//! through whole frames, blocking streams and tokio streams; and the
//! decoder survives any bytes (see also `tests/decoder_fuzz_body.rs`,
//! which also bounds its memory).

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

fn serial() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z0-9-]{1,20}", any::<String>()]
}

fn block_range() -> impl Strategy<Value = BlockRange> {
    (any::<u64>(), any::<u64>()).prop_map(|(start, count)| BlockRange { start, count })
}

fn disposition() -> impl Strategy<Value = Disposition> {
    prop_oneof![Just(Disposition::Keep), Just(Disposition::Drop)]
}

fn hint_kind() -> impl Strategy<Value = HintKind> {
    prop_oneof![
        Just(HintKind::Hot),
        Just(HintKind::Cold),
        Just(HintKind::Disposable),
        Just(HintKind::Forget)
    ]
}

fn device_stats() -> impl Strategy<Value = DeviceStats> {
    (serial(), any::<[u64; 8]>(), any::<Option<u64>>()).prop_map(|(serial, n, last)| DeviceStats {
        serial,
        size_bytes: n[0],
        hot_blocks: n[1],
        cold_blocks: n[2],
        disposable_blocks: n[3],
        given_away_blocks: n[4],
        evict_requests_answered: n[5],
        grow_notices_answered: n[6],
        last_answer_micros: last.map(|l| l ^ n[7]),
    })
}

/// Any message, lists up to a few hundred entries.
pub(crate) fn message() -> impl Strategy<Value = Message> {
    let devices = vec((serial(), any::<u64>()), 0..8).prop_map(|d| {
        d.into_iter().map(|(serial, size_bytes)| Device { serial, size_bytes }).collect()
    });
    let evict_ranges = vec(
        (any::<u64>(), any::<u64>(), disposition())
            .prop_map(|(start, count, disposition)| EvictRange { start, count, disposition }),
        0..300,
    );
    prop_oneof![
        (any::<u16>(), serial(), devices).prop_map(|(version, agent, devices)| Message::Hello(
            Hello { version, agent, devices }
        )),
        any::<u16>().prop_map(|version| Message::Welcome { version }),
        any::<String>().prop_map(|reason| Message::Refused { reason }),
        (
            (any::<u64>(), serial(), any::<u64>(), any::<u32>(), any::<u32>()),
            proptest::option::of(vec(block_range(), 0..300))
        )
            .prop_map(|((id, serial, count, block_size, deadline_ms), resident)| {
                Message::EvictRequest(EvictRequest {
                    id,
                    serial,
                    count,
                    block_size,
                    deadline_ms,
                    resident,
                })
            }),
        (any::<u64>(), serial(), evict_ranges).prop_map(|(id, serial, ranges)| {
            Message::EvictAnswer(EvictAnswer { id, serial, ranges })
        }),
        (any::<u64>(), serial(), any::<u64>(), any::<u32>()).prop_map(
            |(id, serial, count, block_size)| {
                Message::GrowNotice(GrowNotice { id, serial, count, block_size })
            }
        ),
        (any::<u64>(), serial(), vec(block_range(), 0..300))
            .prop_map(|(id, serial, ranges)| Message::HotRanges(HotRanges { id, serial, ranges })),
        Just(Message::StatsRequest),
        vec(device_stats(), 0..8).prop_map(|devices| Message::Stats(Stats { devices })),
        any::<u64>().prop_map(|nonce| Message::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Message::Pong { nonce }),
        (any::<Option<u64>>(), any::<String>())
            .prop_map(|(id, message)| Message::Error { id, message }),
        (serial(), hint_kind(), vec(block_range(), 0..300))
            .prop_map(|(serial, kind, ranges)| Message::Hint(Hint { serial, kind, ranges })),
        (serial(), any::<u64>())
            .prop_map(|(serial, blocks)| Message::HintAccepted { serial, blocks }),
    ]
}

/// Every variant, once, for tests that must cover all kinds.
#[test]
fn every_message_kind_is_covered_by_the_strategy() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut kinds = std::collections::BTreeSet::new();
    for _ in 0..2000 {
        kinds.insert(message().new_tree(&mut runner).unwrap().current().kind());
    }
    assert_eq!(kinds.len() as u32, super::message::MESSAGE_KINDS, "{kinds:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_survives_a_whole_frame_round_trip(message in message()) {
        let frame = encode(&message).unwrap();
        let length = u32::from_le_bytes(frame[..4].try_into().unwrap());
        prop_assert_eq!(length as usize, frame.len() - 4);
        prop_assert!(length <= MAX_FRAME);
        prop_assert_eq!(decode(&frame).unwrap(), message);
    }

    #[test]
    fn a_stream_of_frames_reads_back_in_order(messages in vec(message(), 0..8)) {
        let mut stream = Vec::new();
        for m in &messages {
            write_frame(&mut stream, m).unwrap();
        }
        let mut reader = &stream[..];
        for m in &messages {
            prop_assert_eq!(&read_frame(&mut reader).unwrap(), m);
        }
        prop_assert!(matches!(read_frame(&mut reader), Err(ProtocolError::Closed)));
    }

    #[test]
    fn async_framing_matches_blocking_framing(messages in vec(message(), 1..6)) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let mut stream = Vec::new();
            for m in &messages {
                write_frame_async(&mut stream, m).await.unwrap();
            }
            let mut blocking = Vec::new();
            for m in &messages {
                write_frame(&mut blocking, m).unwrap();
            }
            assert_eq!(stream, blocking);
            let mut reader = &stream[..];
            for m in &messages {
                assert_eq!(&read_frame_async(&mut reader).await.unwrap(), m);
            }
            assert!(matches!(read_frame_async(&mut reader).await, Err(ProtocolError::Closed)));
        });
    }

    #[test]
    fn every_cut_of_a_frame_is_reported_as_truncated(message in message(), cut in any::<prop::sample::Index>()) {
        let frame = encode(&message).unwrap();
        let cut = cut.index(frame.len());
        let err = decode(&frame[..cut]).unwrap_err();
        prop_assert!(matches!(err, ProtocolError::Truncated { .. }), "{}", err);
        let streamed = read_frame(&mut &frame[..cut]).unwrap_err();
        let closed_or_truncated =
            matches!(streamed, ProtocolError::Truncated { .. } | ProtocolError::Closed);
        prop_assert!(closed_or_truncated, "{}", streamed);
    }

    #[test]
    fn the_decoder_survives_arbitrary_bytes(bytes in vec(any::<u8>(), 0..512)) {
        check_decoder(&bytes);
        // The same bytes behind a valid length prefix reach the payload decoder.
        let mut framed = (bytes.len() as u32).to_le_bytes().to_vec();
        framed.extend(&bytes);
        check_decoder(&framed);
    }

    #[test]
    fn the_decoder_survives_corrupted_frames(
        message in message(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut frame = encode(&message).unwrap();
        for (at, byte) in flips {
            let i = at.index(frame.len());
            frame[i] ^= byte;
        }
        check_decoder(&frame);
    }
}
