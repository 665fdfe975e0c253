//! The fixed newstyle handshake: greeting, client flags, and option haggling
//! until the client enters transmission (`NBD_OPT_GO` or the legacy
//! `NBD_OPT_EXPORT_NAME`) or aborts.
//!
//! Every option header is checked before its payload is read: the magic must
//! be `IHAVEOPT` (a transmission request sent before negotiation ended fails
//! here), and the payload must fit [`MAX_OPTION_LEN`]; an option that breaks
//! either rule ends the session, since skipping gigabytes is not worth it.
//! Payloads are parsed with bounds-checked readers, so the most a handshake
//! ever allocates is one bounded payload. Malformed but bounded options get
//! an error reply and haggling continues, as the protocol asks.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zerocopy::IntoBytes;

use super::export::{Export, ExportTable};
use super::proto::{
    export_name_reply, greeting, meta_context_entry, option_reply, parse_export_request,
    parse_meta_context_request, server_entry, InfoBlockSize, InfoExport, OptionFault, OptionHeader,
    PayloadReader, BASE_ALLOCATION, BASE_ALLOCATION_ID, CLIENT_FIXED_NEWSTYLE, CLIENT_NO_ZEROES,
    IHAVEOPT, INFO_BLOCK_SIZE, INFO_EXPORT, INFO_NAME, MAX_OPTION_LEN, MAX_PAYLOAD, MIN_BLOCK,
    OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_LIST, OPT_LIST_META_CONTEXT,
    OPT_SET_META_CONTEXT, OPT_STRUCTURED_REPLY, REP_ACK, REP_ERR_INVALID, REP_ERR_TOO_BIG,
    REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_INFO, REP_META_CONTEXT, REP_SERVER,
};
use zerocopy::byteorder::network_endian::{U16, U32, U64};

/// Most options one handshake may send before entering transmission.
pub const MAX_OPTIONS: usize = 1024;

/// What the handshake agreed on, for the transmission phase.
#[derive(Debug)]
pub(crate) struct Session {
    pub export: Arc<Export>,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected for this export.
    pub block_status: bool,
}

/// How a handshake ended without an error.
#[derive(Debug)]
pub(crate) enum Outcome {
    Transmit(Session),
    Aborted,
}

/// Why a handshake failed. All but `Io` are protocol violations by the
/// client, and the server logs them as rejections.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("connection failed during the handshake")]
    Io(#[from] io::Error),
    #[error("client flags {0:#x} contain bits this server never offered")]
    UnknownClientFlags(u32),
    #[error(
        "option request has magic {0:#018x}, not IHAVEOPT (a command before negotiation ended?)"
    )]
    BadOptionMagic(u64),
    #[error(
        "option {option} declares {length} payload bytes, over the {MAX_OPTION_LEN}-byte limit"
    )]
    OptionTooLong { option: u32, length: u32 },
    #[error("NBD_OPT_EXPORT_NAME named {0:?}, which is not exported")]
    UnknownExportName(String),
    #[error("NBD_OPT_EXPORT_NAME carried an unusable name: {0}")]
    BadExportName(OptionFault),
    #[error("more than {MAX_OPTIONS} options without entering transmission")]
    TooManyOptions,
}

impl HandshakeError {
    /// True when the client broke the protocol (rather than just going away).
    pub fn is_violation(&self) -> bool {
        !matches!(self, HandshakeError::Io(_))
    }
}

/// State carried between options.
struct Haggling<'a> {
    exports: &'a ExportTable,
    structured: bool,
    /// Canonical name of the export `base:allocation` was selected for.
    meta_export: Option<String>,
    no_zeroes: bool,
}

/// Run the server side of the handshake.
pub(crate) async fn negotiate<R, W>(
    reader: &mut R,
    writer: &mut W,
    exports: &ExportTable,
) -> Result<Outcome, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    writer.write_all(greeting().as_bytes()).await?;
    writer.flush().await?;
    let client_flags = reader.read_u32().await?;
    if client_flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(HandshakeError::UnknownClientFlags(client_flags));
    }
    let mut state = Haggling {
        exports,
        structured: false,
        meta_export: None,
        no_zeroes: client_flags & CLIENT_NO_ZEROES != 0,
    };
    for _ in 0..MAX_OPTIONS {
        let mut raw = [0u8; 16];
        reader.read_exact(&mut raw).await?;
        let header: OptionHeader = zerocopy::transmute!(raw);
        if header.magic.get() != IHAVEOPT {
            return Err(HandshakeError::BadOptionMagic(header.magic.get()));
        }
        let option = header.option.get();
        let length = header.length.get();
        if length > MAX_OPTION_LEN {
            if option != OPT_EXPORT_NAME {
                let message = b"option payload too large; closing";
                writer.write_all(&option_reply(option, REP_ERR_TOO_BIG, message)).await?;
                writer.flush().await?;
            }
            return Err(HandshakeError::OptionTooLong { option, length });
        }
        let mut payload = vec![0u8; length as usize];
        reader.read_exact(&mut payload).await?;
        let (replies, outcome) = state.answer(option, &payload)?;
        writer.write_all(&replies).await?;
        writer.flush().await?;
        if let Some(outcome) = outcome {
            return Ok(outcome);
        }
    }
    Err(HandshakeError::TooManyOptions)
}

impl Haggling<'_> {
    /// The reply bytes for one option, and the outcome if it ends haggling.
    fn answer(
        &mut self,
        option: u32,
        payload: &[u8],
    ) -> Result<(Vec<u8>, Option<Outcome>), HandshakeError> {
        let reply = |kind: u32, data: &[u8]| option_reply(option, kind, data);
        let fault = |f: OptionFault| option_reply(option, f.reply_type(), f.to_string().as_bytes());
        match option {
            OPT_EXPORT_NAME => {
                let name = PayloadReader::new(payload)
                    .string(payload.len() as u32)
                    .map_err(HandshakeError::BadExportName)?;
                let export = self
                    .exports
                    .resolve(name)
                    .ok_or_else(|| HandshakeError::UnknownExportName(name.to_owned()))?;
                let flags = export.transmission_flags(self.structured);
                let bytes = export_name_reply(export.device.size(), flags, self.no_zeroes);
                Ok((bytes, Some(Outcome::Transmit(self.session(export)))))
            }
            OPT_ABORT => Ok((reply(REP_ACK, &[]), Some(Outcome::Aborted))),
            OPT_LIST if !payload.is_empty() => {
                Ok((fault(OptionFault::Invalid("NBD_OPT_LIST takes no data")), None))
            }
            OPT_LIST => {
                let mut out = Vec::new();
                for name in self.exports.names() {
                    out.extend_from_slice(&reply(REP_SERVER, &server_entry(&name)));
                }
                out.extend_from_slice(&reply(REP_ACK, &[]));
                Ok((out, None))
            }
            OPT_INFO | OPT_GO => {
                let request = match parse_export_request(payload) {
                    Ok(request) => request,
                    Err(f) => return Ok((fault(f), None)),
                };
                let Some(export) = self.exports.resolve(request.name) else {
                    let message = format!("no export named {:?}", request.name);
                    return Ok((reply(REP_ERR_UNKNOWN, message.as_bytes()), None));
                };
                let mut out = self.export_info(&export, &request.info_requests, option);
                out.extend_from_slice(&reply(REP_ACK, &[]));
                let outcome = (option == OPT_GO).then(|| Outcome::Transmit(self.session(export)));
                Ok((out, outcome))
            }
            OPT_STRUCTURED_REPLY if !payload.is_empty() => {
                Ok((fault(OptionFault::Invalid("NBD_OPT_STRUCTURED_REPLY takes no data")), None))
            }
            OPT_STRUCTURED_REPLY => {
                self.structured = true;
                Ok((reply(REP_ACK, &[]), None))
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                Ok((self.meta_context(option, payload), None))
            }
            _ => {
                let message = format!("option {option} is not supported");
                Ok((reply(REP_ERR_UNSUP, message.as_bytes()), None))
            }
        }
    }

    fn session(&self, export: Arc<Export>) -> Session {
        let block_status = self.meta_export.as_deref() == Some(export.name.as_str());
        Session { export, structured: self.structured, block_status }
    }

    /// `NBD_REP_INFO` replies: the export, its block sizes, and its
    /// canonical name when asked (useful when the client used "").
    fn export_info(&self, export: &Export, requests: &[u16], option: u32) -> Vec<u8> {
        let info_export = InfoExport {
            info: U16::new(INFO_EXPORT),
            size: U64::new(export.device.size()),
            flags: U16::new(export.transmission_flags(self.structured)),
        };
        let block_size = InfoBlockSize {
            info: U16::new(INFO_BLOCK_SIZE),
            minimum: U32::new(MIN_BLOCK),
            preferred: U32::new(export.preferred_block_size()),
            maximum: U32::new(MAX_PAYLOAD),
        };
        let mut out = option_reply(option, REP_INFO, info_export.as_bytes());
        out.extend_from_slice(&option_reply(option, REP_INFO, block_size.as_bytes()));
        if requests.contains(&INFO_NAME) {
            let mut name = INFO_NAME.to_be_bytes().to_vec();
            name.extend_from_slice(export.name.as_bytes());
            out.extend_from_slice(&option_reply(option, REP_INFO, &name));
        }
        out
    }

    /// Answer `NBD_OPT_LIST_META_CONTEXT` or `NBD_OPT_SET_META_CONTEXT`.
    fn meta_context(&mut self, option: u32, payload: &[u8]) -> Vec<u8> {
        let reply = |kind: u32, data: &[u8]| option_reply(option, kind, data);
        let setting = option == OPT_SET_META_CONTEXT;
        if setting {
            // A SET replaces the selection even when it fails.
            self.meta_export = None;
        }
        if !self.structured {
            let message = b"negotiate structured replies first";
            return reply(REP_ERR_INVALID, message);
        }
        let request = match parse_meta_context_request(payload) {
            Ok(request) => request,
            Err(f) => return reply(f.reply_type(), f.to_string().as_bytes()),
        };
        let Some(export) = self.exports.resolve(request.export) else {
            let message = format!("no export named {:?}", request.export);
            return reply(REP_ERR_UNKNOWN, message.as_bytes());
        };
        let selected = if setting {
            request.queries.contains(&BASE_ALLOCATION)
        } else {
            request.queries.is_empty()
                || request.queries.iter().any(|q| *q == "base:" || *q == BASE_ALLOCATION)
        };
        let mut out = Vec::new();
        if selected {
            let id = if setting { BASE_ALLOCATION_ID } else { 0 };
            out = reply(REP_META_CONTEXT, &meta_context_entry(id, BASE_ALLOCATION));
            if setting {
                self.meta_export = Some(export.name.clone());
            }
        }
        out.extend_from_slice(&reply(REP_ACK, &[]));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::proto::{REP_ERR_TOO_BIG, TX_SEND_DF};
    use crate::MemDevice;

    fn table() -> ExportTable {
        let table = ExportTable::default();
        table.add("disk", Arc::new(MemDevice::new(1 << 20)), false).unwrap();
        table
    }

    fn haggling(table: &ExportTable) -> Haggling<'_> {
        Haggling { exports: table, structured: false, meta_export: None, no_zeroes: true }
    }

    /// Split concatenated option replies into (reply type, payload).
    fn replies(bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let kind = u32::from_be_bytes(rest[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(rest[16..20].try_into().unwrap()) as usize;
            out.push((kind, rest[20..20 + len].to_vec()));
            rest = &rest[20 + len..];
        }
        out
    }

    fn go_payload(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut p = (name.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            p.extend_from_slice(&i.to_be_bytes());
        }
        p
    }

    fn meta_payload(name: &str, queries: &[&str]) -> Vec<u8> {
        let mut p = (name.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            p.extend_from_slice(&(q.len() as u32).to_be_bytes());
            p.extend_from_slice(q.as_bytes());
        }
        p
    }

    #[test]
    fn go_sends_export_and_block_size_info_then_ack() {
        let table = table();
        let (bytes, outcome) =
            haggling(&table).answer(OPT_GO, &go_payload("disk", &[INFO_NAME])).unwrap();
        let replies = replies(&bytes);
        assert_eq!(replies.len(), 4);
        assert_eq!(replies[0].0, REP_INFO);
        assert_eq!(&replies[0].1[..2], &[0, 0]);
        assert_eq!(&replies[0].1[2..10], &(1u64 << 20).to_be_bytes());
        assert_eq!(&replies[1].1, &[0, 3, 0, 0, 0, 1, 0, 0, 0x10, 0, 0x02, 0, 0, 0]);
        assert_eq!(&replies[2].1, b"\0\x01disk");
        assert_eq!(replies[3].0, REP_ACK);
        assert!(matches!(outcome, Some(Outcome::Transmit(_))));
    }

    #[test]
    fn info_for_a_missing_export_is_unknown_and_keeps_haggling() {
        let table = table();
        let (bytes, outcome) = haggling(&table).answer(OPT_INFO, &go_payload("nope", &[])).unwrap();
        assert_eq!(replies(&bytes)[0].0, REP_ERR_UNKNOWN);
        assert!(outcome.is_none());
    }

    #[test]
    fn export_name_for_a_missing_export_ends_the_session() {
        let table = table();
        let err = haggling(&table).answer(OPT_EXPORT_NAME, b"nope").unwrap_err();
        assert_eq!(err.to_string(), "NBD_OPT_EXPORT_NAME named \"nope\", which is not exported");
    }

    #[test]
    fn unknown_options_are_unsupported_not_fatal() {
        let table = table();
        let (bytes, outcome) = haggling(&table).answer(11, &[]).unwrap();
        assert_eq!(replies(&bytes)[0].0, REP_ERR_UNSUP);
        assert!(outcome.is_none());
    }

    #[test]
    fn meta_context_needs_structured_replies_first() {
        let table = table();
        let mut state = haggling(&table);
        let payload = meta_payload("disk", &[BASE_ALLOCATION]);
        let (bytes, _) = state.answer(OPT_SET_META_CONTEXT, &payload).unwrap();
        assert_eq!(replies(&bytes)[0].0, REP_ERR_INVALID);
        state.answer(OPT_STRUCTURED_REPLY, &[]).unwrap();
        let (bytes, _) = state.answer(OPT_SET_META_CONTEXT, &payload).unwrap();
        let replies = replies(&bytes);
        assert_eq!(replies[0].0, REP_META_CONTEXT);
        assert_eq!(&replies[0].1[..4], &BASE_ALLOCATION_ID.to_be_bytes());
        assert_eq!(&replies[0].1[4..], BASE_ALLOCATION.as_bytes());
        assert_eq!(replies[1].0, REP_ACK);
        let (_, outcome) = state.answer(OPT_GO, &go_payload("", &[])).unwrap();
        let Some(Outcome::Transmit(session)) = outcome else { panic!("GO failed") };
        assert!(session.structured && session.block_status);
        assert_ne!(session.export.transmission_flags(true) & TX_SEND_DF, 0);
    }

    #[test]
    fn block_status_is_off_when_meta_context_named_another_export() {
        let table = table();
        table.add("other", Arc::new(MemDevice::new(4096)), false).unwrap();
        let mut state = haggling(&table);
        state.answer(OPT_STRUCTURED_REPLY, &[]).unwrap();
        state.answer(OPT_SET_META_CONTEXT, &meta_payload("other", &[BASE_ALLOCATION])).unwrap();
        let (_, outcome) = state.answer(OPT_GO, &go_payload("disk", &[])).unwrap();
        let Some(Outcome::Transmit(session)) = outcome else { panic!("GO failed") };
        assert!(!session.block_status);
    }

    #[test]
    fn list_meta_context_wildcard_lists_base_allocation() {
        let table = table();
        let mut state = haggling(&table);
        state.answer(OPT_STRUCTURED_REPLY, &[]).unwrap();
        for queries in [&[][..], &["base:"][..]] {
            let (bytes, _) =
                state.answer(OPT_LIST_META_CONTEXT, &meta_payload("disk", queries)).unwrap();
            let replies = replies(&bytes);
            assert_eq!(replies[0].0, REP_META_CONTEXT);
            assert_eq!(&replies[0].1[4..], BASE_ALLOCATION.as_bytes());
        }
        let (bytes, _) =
            state.answer(OPT_LIST_META_CONTEXT, &meta_payload("disk", &["x-other:"])).unwrap();
        assert_eq!(replies(&bytes), vec![(REP_ACK, vec![])]);
        assert!(state.meta_export.is_none(), "LIST never selects");
    }

    #[test]
    fn too_many_meta_queries_are_refused_as_too_big() {
        let table = table();
        let mut state = haggling(&table);
        state.answer(OPT_STRUCTURED_REPLY, &[]).unwrap();
        let queries = vec!["base:allocation"; 17];
        let (bytes, _) =
            state.answer(OPT_SET_META_CONTEXT, &meta_payload("disk", &queries)).unwrap();
        assert_eq!(replies(&bytes)[0].0, REP_ERR_TOO_BIG);
    }

    #[tokio::test]
    async fn oversized_option_is_refused_before_its_payload_is_read() {
        let table = table();
        let mut input = CLIENT_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        input.extend_from_slice(&IHAVEOPT.to_be_bytes());
        input.extend_from_slice(&OPT_GO.to_be_bytes());
        input.extend_from_slice(&0xffff_ff00u32.to_be_bytes());
        let mut reader = &input[..];
        let mut output = Vec::new();
        let err = negotiate(&mut reader, &mut output, &table).await.unwrap_err();
        assert!(matches!(err, HandshakeError::OptionTooLong { option: 7, length: 0xffff_ff00 }));
        assert_eq!(replies(&output[18..])[0].0, REP_ERR_TOO_BIG);
    }

    #[tokio::test]
    async fn a_transmission_request_during_the_handshake_is_bad_magic() {
        let table = table();
        let mut input = CLIENT_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        input.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        input.extend_from_slice(&[0u8; 24]);
        let mut reader = &input[..];
        let err = negotiate(&mut reader, &mut Vec::new(), &table).await.unwrap_err();
        assert!(matches!(err, HandshakeError::BadOptionMagic(_)));
        assert!(err.is_violation());
    }

    #[tokio::test]
    async fn unknown_client_flags_end_the_handshake() {
        let table = table();
        let input = 0x8000_0001u32.to_be_bytes();
        let err = negotiate(&mut &input[..], &mut Vec::new(), &table).await.unwrap_err();
        assert!(matches!(err, HandshakeError::UnknownClientFlags(0x8000_0001)));
    }
}
