//! The pmvisor guest agent (SPEC §6) and the versioned host<->agent wire
//! protocol shared with the host.
