//! NBD protocol constants, as numbered by the NBD protocol specification
//! (`doc/proto.md` of the NetworkBlockDevice/nbd project). Everything on the wire is
//! big-endian ("network byte order").
//!
//! Only the subset this server speaks or must recognise is listed; values the server
//! never sends nor accepts (extended headers, TLS) are named only where the server has to
//! answer them.

// Handshake magics.
/// `NBDMAGIC`: the first eight bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: sent by the server after `NBDMAGIC`, and by the client before each option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic opening every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

// Handshake flags (server, 16 bits) and client flags (32 bits).
/// `NBD_FLAG_FIXED_NEWSTYLE`: the server speaks the fixed newstyle handshake.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// `NBD_FLAG_NO_ZEROES`: the server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// `NBD_FLAG_C_FIXED_NEWSTYLE`: the client speaks the fixed newstyle handshake.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// `NBD_FLAG_C_NO_ZEROES`: the client asks for no zero padding.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Options.
/// `NBD_OPT_EXPORT_NAME`: enter transmission on a named export (cannot fail politely).
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`: the client ends the handshake.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`: list the export names.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_STARTTLS`: upgrade the connection to TLS (offered when the server has TLS).
pub const OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO`: describe an export without entering transmission.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`: describe an export and enter transmission on it.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`: use structured replies in transmission.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// `NBD_OPT_LIST_META_CONTEXT`: which metadata contexts the server offers.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// `NBD_OPT_SET_META_CONTEXT`: select the metadata contexts `NBD_CMD_BLOCK_STATUS` reports.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// `NBD_OPT_EXTENDED_HEADERS`: not offered.
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// Option replies; errors have bit 31 set.
/// `NBD_REP_ACK`: the option succeeded (the last reply to it).
pub const REP_ACK: u32 = 1;
/// `NBD_REP_SERVER`: one export name, in reply to `NBD_OPT_LIST`.
pub const REP_SERVER: u32 = 2;
/// `NBD_REP_INFO`: one piece of information about an export.
pub const REP_INFO: u32 = 3;
/// `NBD_REP_META_CONTEXT`: one metadata context, its id then its name.
pub const REP_META_CONTEXT: u32 = 4;
/// `NBD_REP_ERR_UNSUP`: the option is not supported.
pub const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
/// `NBD_REP_ERR_POLICY`: refused by policy (e.g. the volume has another writer).
pub const REP_ERR_POLICY: u32 = (1 << 31) | 2;
/// `NBD_REP_ERR_INVALID`: the option was malformed.
pub const REP_ERR_INVALID: u32 = (1 << 31) | 3;
/// `NBD_REP_ERR_TLS_REQD`: the server takes this option only over TLS.
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) | 5;
/// `NBD_REP_ERR_UNKNOWN`: no export of that name.
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;
/// `NBD_REP_ERR_TOO_BIG`: the request is larger than the server accepts.
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) | 9;

// Information types in `NBD_REP_INFO` (for `NBD_OPT_INFO` / `NBD_OPT_GO`).
/// `NBD_INFO_EXPORT`: export size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_NAME`: the export's canonical name.
pub const INFO_NAME: u16 = 1;
/// `NBD_INFO_BLOCK_SIZE`: minimum, preferred and maximum block sizes.
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags (16 bits).
/// `NBD_FLAG_HAS_FLAGS`: always set.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
/// `NBD_FLAG_READ_ONLY`: writes are refused with `EPERM`.
pub const FLAG_READ_ONLY: u16 = 1 << 1;
/// `NBD_FLAG_SEND_FLUSH`: `NBD_CMD_FLUSH` is supported.
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
/// `NBD_FLAG_SEND_FUA`: `NBD_CMD_FLAG_FUA` is supported.
pub const FLAG_SEND_FUA: u16 = 1 << 3;
/// `NBD_FLAG_SEND_TRIM`: `NBD_CMD_TRIM` is supported.
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
/// `NBD_FLAG_SEND_WRITE_ZEROES`: `NBD_CMD_WRITE_ZEROES` is supported.
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// `NBD_FLAG_SEND_DF`: `NBD_CMD_FLAG_DF` (do not fragment reads) is supported.
pub const FLAG_SEND_DF: u16 = 1 << 7;
/// `NBD_FLAG_CAN_MULTI_CONN`: a flushed write on one connection is seen by all.
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Requests.
/// Magic opening every request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_CMD_READ`.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`: the client disconnects once its requests are answered.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`: every completed write is durable once this is answered.
pub const CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM`: the range's contents may be discarded.
pub const CMD_TRIM: u16 = 4;
/// `NBD_CMD_WRITE_ZEROES`: the range reads as zeroes (may become a hole).
pub const CMD_WRITE_ZEROES: u16 = 6;
/// `NBD_CMD_BLOCK_STATUS`: the range's state in each selected metadata context.
pub const CMD_BLOCK_STATUS: u16 = 7;
/// `NBD_CMD_FLAG_FUA`: the write is durable once answered.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// `NBD_CMD_FLAG_NO_HOLE`: write-zeroes keeps the range provisioned.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// `NBD_CMD_FLAG_DF`: answer a structured read in one chunk.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// `NBD_CMD_FLAG_REQ_ONE`: answer a block status with one descriptor.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

// Replies.
/// Magic opening a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic opening a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// `NBD_REPLY_FLAG_DONE`: the last chunk of a structured reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// `NBD_REPLY_TYPE_NONE`: a chunk without payload.
pub const REPLY_TYPE_NONE: u16 = 0;
/// `NBD_REPLY_TYPE_OFFSET_DATA`: an offset, then data read there.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// `NBD_REPLY_TYPE_BLOCK_STATUS`: a context id, then (length, flags) descriptors.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// `NBD_REPLY_TYPE_ERROR`: an error number and a message.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;

// Metadata contexts.
/// The one context this server offers: which ranges are holes, which read as zeroes.
pub const META_BASE_ALLOCATION: &str = "base:allocation";
/// The id this server gives `base:allocation` (any number the server picks).
pub const META_BASE_ALLOCATION_ID: u32 = 1;
/// `NBD_STATE_HOLE` in `base:allocation`: not allocated (reads as zeroes).
pub const STATE_HOLE: u32 = 1 << 0;
/// `NBD_STATE_ZERO` in `base:allocation`: reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

// Error values (the spec fixes these numbers, whatever the host's errno says).
/// `NBD_EPERM`: operation not permitted (a write to a read-only export).
pub const EPERM: u32 = 1;
/// `NBD_EIO`: input/output error.
pub const EIO: u32 = 5;
/// `NBD_EINVAL`: invalid request (bad range, unknown command, too long).
pub const EINVAL: u32 = 22;
/// `NBD_ENOSPC`: no space left (a write past the end, or a full disk).
pub const ENOSPC: u32 = 28;

// Limits this server advertises and enforces.
/// Smallest request granularity: any byte offset and length works.
pub const MIN_BLOCK: u32 = 1;
/// The chunk store's block size: aligned requests avoid read-modify-write.
pub const PREFERRED_BLOCK: u32 = 4096;
/// Largest payload of a single READ or WRITE (`NBD_INFO_BLOCK_SIZE` maximum).
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// Longest export name (the spec's string limit), and longest metadata context query.
pub const MAX_NAME_LEN: u32 = 4096;
/// Most bytes one `NBD_CMD_BLOCK_STATUS` reports on: a longer request is answered for its
/// first this many (the spec lets a server describe less than asked; the client asks on).
pub const MAX_BLOCK_STATUS_LEN: u64 = 256 * 1024 * 1024;
/// Longest option payload read during the handshake; anything larger is a client we
/// refuse to buffer for, so the connection is dropped.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
