//! SPDY/3.1, the multiplexing protocol kubectl and kubelet have spoken to streaming servers
//! since the beginning (`Upgrade: SPDY/3.1`): frames, stream setup (SYN_STREAM / SYN_REPLY),
//! header blocks compressed with one zlib context per direction seeded with the SPDY/3
//! dictionary, flow control (WINDOW_UPDATE, SETTINGS initial window), PING, GOAWAY and
//! RST_STREAM.
//!
//! Split as hyperium/h2 splits `frame/` from `proto/`: the codec ([`frame`]: the wire format
//! and typed control frames; [`headers`]: the header block codec) knows nothing of
//! connections; the connection ([`Conn`] in `conn`, its reader in `read`, [`Stream`] and
//! [`StreamWriter`] in `stream`) knows streams, windows and who may open what.
//!
//! [`Conn`] is either side of a connection: the server accepts the streams the client opens,
//! the client (tests, benchmark) opens them. Each stream reads its peer's data in order and
//! writes its own, with FIN to end its half.

mod conn;
pub mod frame;
pub mod headers;
mod read;
mod stream;

pub use conn::{Conn, CONNECTION_BUFFER_BYTES, INITIAL_WINDOW, MAX_STREAMS};
pub use frame::{
    control, data_frame, parse_control, read_frame, Control, Frame, CANCEL, FLAG_FIN,
    FLAG_UNIDIRECTIONAL, GOAWAY, HEADERS, PING, PROTOCOL_ERROR, REFUSED_STREAM, RST_STREAM,
    SETTINGS, SYN_REPLY, SYN_STREAM, VERSION, WINDOW_UPDATE,
};
pub use headers::{dictionary, header, HeaderDecoder, HeaderEncoder, Headers};
pub use stream::{Stream, StreamWriter};
