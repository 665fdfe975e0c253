//! The NBD wire format: magic numbers, flag and type values, the fixed-size
//! headers as big-endian `#[repr(C)]` zerocopy structs, and the encoders and
//! bounded decoders that the handshake and transmission phases use.
//!
//! Everything on the wire is big-endian (network order). Variable-length
//! option payloads are parsed with [`PayloadReader`], which checks every
//! length against the bytes actually present before slicing, so a hostile
//! length can at worst produce an error, never an allocation.

use zerocopy::byteorder::network_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// "NBDMAGIC", the first word of every handshake.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": newstyle greeting and the magic of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server → client).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags (client → server).
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags.
pub const TX_HAS_FLAGS: u16 = 1 << 0;
pub const TX_READ_ONLY: u16 = 1 << 1;
pub const TX_SEND_FLUSH: u16 = 1 << 2;
pub const TX_SEND_FUA: u16 = 1 << 3;
pub const TX_SEND_TRIM: u16 = 1 << 5;
pub const TX_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TX_SEND_DF: u16 = 1 << 7;
pub const TX_CAN_MULTI_CONN: u16 = 1 << 8;

/// Option types.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types; errors have bit 31 set.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
pub const REP_ERR_SHUTDOWN: u32 = 0x8000_0007;
pub const REP_ERR_TOO_BIG: u32 = 0x8000_0009;

/// Information types of `NBD_REP_INFO`.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

/// Structured reply flag and chunk types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = 0x8001;

/// Error values of replies (the Linux errnos).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ESHUTDOWN: u32 = 108;

/// `base:allocation` status flags.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// The one metadata context this server offers, and the id it selects it as.
pub const BASE_ALLOCATION: &str = "base:allocation";
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Longest string (export name, query, message) the protocol allows.
pub const MAX_STRING_LEN: usize = 4096;
/// Longest option payload accepted: a maximal name plus a maximal query and
/// the length fields around them. Longer options end the session.
pub const MAX_OPTION_LEN: u32 = 2 * MAX_STRING_LEN as u32 + 64;
/// Most meta-context queries one option may carry.
pub const MAX_META_QUERIES: u32 = 16;
/// Most information requests one `NBD_OPT_GO`/`INFO` may carry.
pub const MAX_INFO_REQUESTS: u16 = 32;
/// Advertised block size constraints; the maximum bounds READ and WRITE
/// lengths and is the largest payload ever buffered (TRIM and WRITE_ZEROES
/// carry none and may be longer).
pub const MIN_BLOCK: u32 = 1;
pub const PREFERRED_BLOCK: u32 = 4096;
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// A transmission command type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disconnect,
    Flush,
    Trim,
    WriteZeroes,
    BlockStatus,
    /// A type this server does not implement (including `NBD_CMD_CACHE`).
    Unknown(u16),
}

impl Command {
    /// Decode the 16-bit type field of a request.
    pub fn from_wire(kind: u16) -> Self {
        match kind {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disconnect,
            3 => Command::Flush,
            4 => Command::Trim,
            6 => Command::WriteZeroes,
            7 => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }

    /// The command flags that are meaningful for this command. FUA is
    /// accepted everywhere, as clients are known to set it on any command.
    pub fn allowed_flags(self, structured: bool) -> u16 {
        match self {
            Command::Read if structured => CMD_FLAG_FUA | CMD_FLAG_DF,
            Command::WriteZeroes => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
            Command::BlockStatus => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
            _ => CMD_FLAG_FUA,
        }
    }
}

/// Server greeting, 18 bytes:
/// ```text
/// 0  u64 NBD_MAGIC   8  u64 IHAVEOPT   16  u16 handshake flags
/// ```
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Greeting {
    pub passwd: U64,
    pub magic: U64,
    pub flags: U16,
}
const _: () = assert!(size_of::<Greeting>() == 18);

/// Option request header, 16 bytes, followed by `length` payload bytes:
/// ```text
/// 0  u64 IHAVEOPT   8  u32 option   12  u32 length
/// ```
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct OptionHeader {
    pub magic: U64,
    pub option: U32,
    pub length: U32,
}
const _: () = assert!(size_of::<OptionHeader>() == 16);

/// Option reply header, 20 bytes, followed by `length` payload bytes:
/// ```text
/// 0  u64 OPTION_REPLY_MAGIC   8  u32 option   12  u32 reply type   16  u32 length
/// ```
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct OptionReplyHeader {
    pub magic: U64,
    pub option: U32,
    pub reply: U32,
    pub length: U32,
}
const _: () = assert!(size_of::<OptionReplyHeader>() == 20);

/// Transmission request, 28 bytes (a WRITE is followed by `length` bytes):
/// ```text
/// 0  u32 REQUEST_MAGIC   4  u16 flags   6  u16 type
/// 8  u64 handle          16 u64 offset  24 u32 length
/// ```
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RequestHeader {
    pub magic: U32,
    pub flags: U16,
    pub kind: U16,
    pub handle: U64,
    pub offset: U64,
    pub length: U32,
}
const _: () = assert!(size_of::<RequestHeader>() == 28);

/// Simple reply, 16 bytes (a successful READ is followed by its data):
/// ```text
/// 0  u32 SIMPLE_REPLY_MAGIC   4  u32 error   8  u64 handle
/// ```
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SimpleReplyHeader {
    pub magic: U32,
    pub error: U32,
    pub handle: U64,
}
const _: () = assert!(size_of::<SimpleReplyHeader>() == 16);

/// Structured reply chunk header, 20 bytes, followed by `length` bytes:
/// ```text
/// 0  u32 STRUCTURED_REPLY_MAGIC   4  u16 flags   6  u16 type
/// 8  u64 handle                   16 u32 length
/// ```
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ChunkHeader {
    pub magic: U32,
    pub flags: U16,
    pub kind: U16,
    pub handle: U64,
    pub length: U32,
}
const _: () = assert!(size_of::<ChunkHeader>() == 20);

/// `NBD_INFO_EXPORT` payload, 12 bytes:
/// ```text
/// 0  u16 INFO_EXPORT   2  u64 size   10  u16 transmission flags
/// ```
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct InfoExport {
    pub info: U16,
    pub size: U64,
    pub flags: U16,
}
const _: () = assert!(size_of::<InfoExport>() == 12);

/// `NBD_INFO_BLOCK_SIZE` payload, 14 bytes:
/// ```text
/// 0  u16 INFO_BLOCK_SIZE   2  u32 minimum   6  u32 preferred   10  u32 maximum
/// ```
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct InfoBlockSize {
    pub info: U16,
    pub minimum: U32,
    pub preferred: U32,
    pub maximum: U32,
}
const _: () = assert!(size_of::<InfoBlockSize>() == 14);

/// The server greeting of fixed newstyle negotiation.
pub fn greeting() -> Greeting {
    Greeting {
        passwd: U64::new(NBD_MAGIC),
        magic: U64::new(IHAVEOPT),
        flags: U16::new(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES),
    }
}

/// One option reply: header and payload.
pub fn option_reply(option: u32, reply: u32, payload: &[u8]) -> Vec<u8> {
    let header = OptionReplyHeader {
        magic: U64::new(OPTION_REPLY_MAGIC),
        option: U32::new(option),
        reply: U32::new(reply),
        length: U32::new(payload.len() as u32),
    };
    let mut out = Vec::with_capacity(20 + payload.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// The answer to `NBD_OPT_EXPORT_NAME`: size, flags and (unless the client
/// asked for none) 124 reserved zero bytes.
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(134);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.resize(out.len() + 124, 0);
    }
    out
}

/// Payload of `NBD_REP_SERVER`: a length-prefixed export name.
pub fn server_entry(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// Payload of `NBD_REP_META_CONTEXT`: context id and name.
pub fn meta_context_entry(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// A simple reply header.
pub fn simple_reply(handle: u64, error: u32) -> SimpleReplyHeader {
    SimpleReplyHeader {
        magic: U32::new(SIMPLE_REPLY_MAGIC),
        error: U32::new(error),
        handle: U64::new(handle),
    }
}

/// A structured reply chunk header.
pub fn chunk_header(flags: u16, kind: u16, handle: u64, length: u32) -> ChunkHeader {
    ChunkHeader {
        magic: U32::new(STRUCTURED_REPLY_MAGIC),
        flags: U16::new(flags),
        kind: U16::new(kind),
        handle: U64::new(handle),
        length: U32::new(length),
    }
}

/// A final `NBD_REPLY_TYPE_ERROR` chunk carrying a human-readable message.
pub fn error_chunk(handle: u64, error: u32, message: &str) -> Vec<u8> {
    let message = &message.as_bytes()[..message.len().min(MAX_STRING_LEN)];
    let header = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, handle, 6 + message.len() as u32);
    let mut out = Vec::with_capacity(26 + message.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// The header (and offset) of an `OFFSET_DATA` chunk; `len` data bytes follow.
pub fn data_chunk_head(handle: u64, offset: u64, len: u32, done: bool) -> Vec<u8> {
    let flags = if done { REPLY_FLAG_DONE } else { 0 };
    let header = chunk_header(flags, REPLY_TYPE_OFFSET_DATA, handle, 8 + len);
    let mut out = Vec::with_capacity(28);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out
}

/// An `OFFSET_HOLE` chunk: `len` bytes at `offset` read as zeroes.
pub fn hole_chunk(handle: u64, offset: u64, len: u32, done: bool) -> Vec<u8> {
    let flags = if done { REPLY_FLAG_DONE } else { 0 };
    let header = chunk_header(flags, REPLY_TYPE_OFFSET_HOLE, handle, 12);
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out
}

/// A final `NONE` chunk, for replies whose content chunks all went out.
pub fn none_chunk(handle: u64) -> ChunkHeader {
    chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, handle, 0)
}

/// A final `BLOCK_STATUS` chunk of `(length, status flags)` descriptors.
pub fn block_status_chunk(handle: u64, context: u32, descriptors: &[(u32, u32)]) -> Vec<u8> {
    let length = 4 + 8 * descriptors.len() as u32;
    let header = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, handle, length);
    let mut out = Vec::with_capacity(20 + length as usize);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&context.to_be_bytes());
    for (len, flags) in descriptors {
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
    }
    out
}

/// Why an option payload was refused; mapped to an `NBD_REP_ERR_*` reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionFault {
    /// Syntactically or semantically invalid (`NBD_REP_ERR_INVALID`).
    #[error("{0}")]
    Invalid(&'static str),
    /// Asks for more than this server's bounds (`NBD_REP_ERR_TOO_BIG`).
    #[error("{0}")]
    TooBig(&'static str),
}

impl OptionFault {
    /// The option reply type reporting this fault.
    pub fn reply_type(&self) -> u32 {
        match self {
            OptionFault::Invalid(_) => REP_ERR_INVALID,
            OptionFault::TooBig(_) => REP_ERR_TOO_BIG,
        }
    }
}

/// A bounds-checked cursor over an option payload.
#[derive(Debug)]
pub struct PayloadReader<'a> {
    rest: &'a [u8],
}

impl<'a> PayloadReader<'a> {
    pub fn new(payload: &'a [u8]) -> Self {
        PayloadReader { rest: payload }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], OptionFault> {
        if n > self.rest.len() {
            return Err(OptionFault::Invalid("a length field runs past the end of the option"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub fn u16(&mut self) -> Result<u16, OptionFault> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, OptionFault> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// A string of `len` bytes: at most [`MAX_STRING_LEN`], UTF-8, no NUL.
    pub fn string(&mut self, len: u32) -> Result<&'a str, OptionFault> {
        if len as usize > MAX_STRING_LEN {
            return Err(OptionFault::TooBig("a string is longer than 4096 bytes"));
        }
        let bytes = self.take(len as usize)?;
        let text = std::str::from_utf8(bytes)
            .map_err(|_| OptionFault::Invalid("a string is not valid UTF-8"))?;
        if text.contains('\0') {
            return Err(OptionFault::Invalid("a string contains NUL"));
        }
        Ok(text)
    }

    /// A string preceded by its 32-bit length.
    pub fn prefixed_string(&mut self) -> Result<&'a str, OptionFault> {
        let len = self.u32()?;
        self.string(len)
    }

    /// Fail unless the whole payload was consumed.
    pub fn finish(self) -> Result<(), OptionFault> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(OptionFault::Invalid("the option has trailing bytes"))
        }
    }
}

/// The payload of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, PartialEq, Eq)]
pub struct ExportRequest<'a> {
    pub name: &'a str,
    pub info_requests: Vec<u16>,
}

/// Parse an `NBD_OPT_INFO` / `NBD_OPT_GO` payload.
pub fn parse_export_request(payload: &[u8]) -> Result<ExportRequest<'_>, OptionFault> {
    let mut reader = PayloadReader::new(payload);
    let name = reader.prefixed_string()?;
    let count = reader.u16()?;
    if count > MAX_INFO_REQUESTS {
        return Err(OptionFault::TooBig("too many information requests"));
    }
    let info_requests = (0..count).map(|_| reader.u16()).collect::<Result<Vec<_>, _>>()?;
    reader.finish()?;
    Ok(ExportRequest { name, info_requests })
}

/// The payload of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, PartialEq, Eq)]
pub struct MetaContextRequest<'a> {
    pub export: &'a str,
    pub queries: Vec<&'a str>,
}

/// Parse a meta-context option payload.
pub fn parse_meta_context_request(payload: &[u8]) -> Result<MetaContextRequest<'_>, OptionFault> {
    let mut reader = PayloadReader::new(payload);
    let export = reader.prefixed_string()?;
    let count = reader.u32()?;
    if count > MAX_META_QUERIES {
        return Err(OptionFault::TooBig("too many meta-context queries"));
    }
    let queries = (0..count).map(|_| reader.prefixed_string()).collect::<Result<Vec<_>, _>>()?;
    reader.finish()?;
    Ok(MetaContextRequest { export, queries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be_string(s: &str) -> Vec<u8> {
        let mut out = (s.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(s.as_bytes());
        out
    }

    #[test]
    fn greeting_is_nbdmagic_ihaveopt_and_fixed_newstyle_flags() {
        let bytes = greeting().as_bytes().to_vec();
        assert_eq!(&bytes[..8], b"NBDMAGIC");
        assert_eq!(&bytes[8..16], b"IHAVEOPT");
        assert_eq!(&bytes[16..], &[0, 3]);
    }

    #[test]
    fn request_header_decodes_big_endian_fields() {
        let mut raw = Vec::new();
        raw.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        raw.extend_from_slice(&1u16.to_be_bytes());
        raw.extend_from_slice(&1u16.to_be_bytes());
        raw.extend_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        raw.extend_from_slice(&4096u64.to_be_bytes());
        raw.extend_from_slice(&512u32.to_be_bytes());
        let header = RequestHeader::read_from_bytes(&raw).unwrap();
        assert_eq!(header.magic.get(), REQUEST_MAGIC);
        assert_eq!(header.flags.get(), CMD_FLAG_FUA);
        assert_eq!(Command::from_wire(header.kind.get()), Command::Write);
        assert_eq!(header.handle.get(), 0x0102_0304_0506_0708);
        assert_eq!((header.offset.get(), header.length.get()), (4096, 512));
    }

    #[test]
    fn unknown_and_cache_command_types_decode_as_unknown() {
        assert_eq!(Command::from_wire(5), Command::Unknown(5));
        assert_eq!(Command::from_wire(0xffff), Command::Unknown(0xffff));
    }

    #[test]
    fn option_reply_carries_magic_option_type_and_length() {
        let reply = option_reply(OPT_LIST, REP_SERVER, &server_entry("disk"));
        assert_eq!(&reply[..8], &OPTION_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&reply[8..12], &3u32.to_be_bytes());
        assert_eq!(&reply[12..16], &2u32.to_be_bytes());
        assert_eq!(&reply[16..20], &8u32.to_be_bytes());
        assert_eq!(&reply[20..], &[0, 0, 0, 4, b'd', b'i', b's', b'k']);
    }

    #[test]
    fn export_name_reply_omits_zeroes_only_when_negotiated() {
        assert_eq!(export_name_reply(1 << 20, 1, false).len(), 134);
        let short = export_name_reply(1 << 20, 0x0101, true);
        assert_eq!(short, [0, 0, 0, 0, 0, 0x10, 0, 0, 1, 1]);
    }

    #[test]
    fn error_chunk_has_done_flag_errno_and_message() {
        let chunk = error_chunk(7, EINVAL, "bad");
        assert_eq!(&chunk[..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&chunk[4..8], &[0, 1, 0x80, 0x01]);
        assert_eq!(&chunk[8..16], &7u64.to_be_bytes());
        assert_eq!(&chunk[16..20], &9u32.to_be_bytes());
        assert_eq!(&chunk[20..24], &22u32.to_be_bytes());
        assert_eq!(&chunk[24..], &[0, 3, b'b', b'a', b'd']);
    }

    #[test]
    fn hole_and_data_chunks_encode_offset_and_length() {
        let hole = hole_chunk(1, 8192, 4096, true);
        assert_eq!(hole.len(), 32);
        assert_eq!(&hole[4..8], &[0, 1, 0, 2]);
        assert_eq!(&hole[16..20], &12u32.to_be_bytes());
        assert_eq!(&hole[20..28], &8192u64.to_be_bytes());
        assert_eq!(&hole[28..], &4096u32.to_be_bytes());
        let data = data_chunk_head(1, 0, 100, false);
        assert_eq!(&data[4..8], &[0, 0, 0, 1]);
        assert_eq!(&data[16..20], &108u32.to_be_bytes());
    }

    #[test]
    fn block_status_chunk_lists_context_then_descriptors() {
        let chunk = block_status_chunk(2, BASE_ALLOCATION_ID, &[(4096, 0), (8192, 3)]);
        assert_eq!(&chunk[16..20], &20u32.to_be_bytes());
        assert_eq!(&chunk[20..24], &1u32.to_be_bytes());
        assert_eq!(&chunk[24..32], &[0, 0, 0x10, 0, 0, 0, 0, 0]);
        assert_eq!(&chunk[32..40], &[0, 0, 0x20, 0, 0, 0, 0, 3]);
    }

    #[test]
    fn go_payload_parses_name_and_info_requests() {
        let mut payload = be_string("disk0");
        payload.extend_from_slice(&2u16.to_be_bytes());
        payload.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        payload.extend_from_slice(&INFO_NAME.to_be_bytes());
        let request = parse_export_request(&payload).unwrap();
        assert_eq!(request.name, "disk0");
        assert_eq!(request.info_requests, vec![INFO_BLOCK_SIZE, INFO_NAME]);
    }

    #[test]
    fn go_payload_with_a_name_length_past_the_end_is_invalid() {
        let mut payload = 0xffff_fff0u32.to_be_bytes().to_vec();
        payload.extend_from_slice(b"abc");
        assert!(matches!(parse_export_request(&payload), Err(OptionFault::TooBig(_))));
        let mut payload = 10u32.to_be_bytes().to_vec();
        payload.extend_from_slice(b"abc");
        assert!(matches!(parse_export_request(&payload), Err(OptionFault::Invalid(_))));
    }

    #[test]
    fn go_payload_with_trailing_bytes_is_invalid() {
        let mut payload = be_string("a");
        payload.extend_from_slice(&0u16.to_be_bytes());
        payload.push(0);
        assert_eq!(
            parse_export_request(&payload),
            Err(OptionFault::Invalid("the option has trailing bytes"))
        );
    }

    #[test]
    fn names_must_be_utf8_without_nul() {
        let mut payload = be_string("a\0b");
        payload.extend_from_slice(&0u16.to_be_bytes());
        assert!(parse_export_request(&payload).is_err());
        let mut payload = 2u32.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0xc3, 0x28, 0, 0]);
        assert!(parse_export_request(&payload).is_err());
    }

    #[test]
    fn meta_context_payload_parses_export_and_queries() {
        let mut payload = be_string("disk");
        payload.extend_from_slice(&2u32.to_be_bytes());
        payload.extend_from_slice(&be_string("base:allocation"));
        payload.extend_from_slice(&be_string("qemu:dirty-bitmap:x"));
        let request = parse_meta_context_request(&payload).unwrap();
        assert_eq!(request.export, "disk");
        assert_eq!(request.queries, vec!["base:allocation", "qemu:dirty-bitmap:x"]);
    }

    #[test]
    fn meta_context_query_count_is_bounded_before_parsing() {
        let mut payload = be_string("disk");
        payload.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            parse_meta_context_request(&payload),
            Err(OptionFault::TooBig("too many meta-context queries"))
        );
    }

    #[test]
    fn read_allows_df_only_with_structured_replies() {
        assert_eq!(Command::Read.allowed_flags(false) & CMD_FLAG_DF, 0);
        assert_ne!(Command::Read.allowed_flags(true) & CMD_FLAG_DF, 0);
        assert_eq!(Command::Trim.allowed_flags(true), CMD_FLAG_FUA);
    }
}
