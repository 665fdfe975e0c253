//! Fuzzes the agent protocol's frame decoder: whole-frame and stream
//! decoding must agree, never panic, and decoded messages must survive a
//! round trip (`pmvisor_agent::protocol::check_decoder`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pmvisor_agent::protocol::check_decoder(data);
});
