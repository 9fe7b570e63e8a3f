//! Frame encoding and decoding: `len: u32 LE | kind: u8 | payload`.

use super::messages::*;
use super::MAX_FRAME_LEN;
use std::fmt;
use std::io::{self, Read, Write};

/// The kind byte of a frame. Values are part of the wire format (`docs/protocol.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Hello = 0x01,
    HelloOk = 0x02,
    Exec = 0x03,
    Attach = 0x04,
    Started = 0x05,
    Wait = 0x06,
    Shutdown = 0x07,
    Ok = 0x08,
    Setup = 0x09,
    Stdin = 0x10,
    Stdout = 0x11,
    Stderr = 0x12,
    Resize = 0x20,
    Signal = 0x21,
    Exit = 0x30,
    Error = 0x7f,
}

impl FrameKind {
    /// Maps a kind byte to its kind, `None` for bytes this version does not define.
    pub fn from_u8(b: u8) -> Option<FrameKind> {
        use FrameKind::*;
        Some(match b {
            0x01 => Hello,
            0x02 => HelloOk,
            0x03 => Exec,
            0x04 => Attach,
            0x05 => Started,
            0x06 => Wait,
            0x07 => Shutdown,
            0x08 => Ok,
            0x09 => Setup,
            0x10 => Stdin,
            0x11 => Stdout,
            0x12 => Stderr,
            0x20 => Resize,
            0x21 => Signal,
            0x30 => Exit,
            0x7f => Error,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    HelloOk(HelloOk),
    Exec(Exec),
    Attach(Attach),
    Started(Started),
    Wait(Wait),
    Shutdown(Shutdown),
    /// Empty acknowledgement (of SHUTDOWN and SETUP).
    Ok,
    Setup(Setup),
    /// Bytes for the session's stdin; an empty payload closes stdin (EOF).
    Stdin(Vec<u8>),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Resize(WinSize),
    Signal(Signal),
    Exit(Exit),
    Error(ErrorMsg),
}

impl Frame {
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Hello(_) => FrameKind::Hello,
            Frame::HelloOk(_) => FrameKind::HelloOk,
            Frame::Exec(_) => FrameKind::Exec,
            Frame::Attach(_) => FrameKind::Attach,
            Frame::Started(_) => FrameKind::Started,
            Frame::Wait(_) => FrameKind::Wait,
            Frame::Shutdown(_) => FrameKind::Shutdown,
            Frame::Ok => FrameKind::Ok,
            Frame::Setup(_) => FrameKind::Setup,
            Frame::Stdin(_) => FrameKind::Stdin,
            Frame::Stdout(_) => FrameKind::Stdout,
            Frame::Stderr(_) => FrameKind::Stderr,
            Frame::Resize(_) => FrameKind::Resize,
            Frame::Signal(_) => FrameKind::Signal,
            Frame::Exit(_) => FrameKind::Exit,
            Frame::Error(_) => FrameKind::Error,
        }
    }

    /// Shorthand for an [`Frame::Error`].
    pub fn error(code: &str, message: impl Into<String>) -> Frame {
        Frame::Error(ErrorMsg::new(code, message))
    }

    /// Encodes the frame (header included) into bytes.
    pub fn encode(&self) -> Vec<u8> {
        let payload: Vec<u8> = match self {
            Frame::Hello(m) => json(m),
            Frame::HelloOk(m) => json(m),
            Frame::Exec(m) => json(m),
            Frame::Attach(m) => json(m),
            Frame::Started(m) => json(m),
            Frame::Wait(m) => json(m),
            Frame::Shutdown(m) => json(m),
            Frame::Ok => Vec::new(),
            Frame::Setup(m) => json(m),
            Frame::Stdin(b) | Frame::Stdout(b) | Frame::Stderr(b) => b.clone(),
            Frame::Resize(m) => json(m),
            Frame::Signal(m) => json(m),
            Frame::Exit(m) => json(m),
            Frame::Error(m) => json(m),
        };
        let len = payload.len() as u32 + 1;
        let mut out = Vec::with_capacity(5 + payload.len());
        out.extend_from_slice(&len.to_le_bytes());
        out.push(self.kind() as u8);
        out.extend_from_slice(&payload);
        out
    }

    /// Decodes a frame body: the kind byte and the payload, without the length prefix.
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Frame, ProtoError> {
        let k = FrameKind::from_u8(kind).ok_or(ProtoError::UnknownKind(kind))?;
        Ok(match k {
            FrameKind::Hello => Frame::Hello(parse(k, payload)?),
            FrameKind::HelloOk => Frame::HelloOk(parse(k, payload)?),
            FrameKind::Exec => Frame::Exec(parse(k, payload)?),
            FrameKind::Attach => Frame::Attach(parse(k, payload)?),
            FrameKind::Started => Frame::Started(parse(k, payload)?),
            FrameKind::Wait => Frame::Wait(parse(k, payload)?),
            FrameKind::Shutdown => Frame::Shutdown(parse(k, payload)?),
            FrameKind::Ok => Frame::Ok,
            FrameKind::Setup => Frame::Setup(parse(k, payload)?),
            FrameKind::Stdin => Frame::Stdin(payload.to_vec()),
            FrameKind::Stdout => Frame::Stdout(payload.to_vec()),
            FrameKind::Stderr => Frame::Stderr(payload.to_vec()),
            FrameKind::Resize => Frame::Resize(parse(k, payload)?),
            FrameKind::Signal => Frame::Signal(parse(k, payload)?),
            FrameKind::Exit => Frame::Exit(parse(k, payload)?),
            FrameKind::Error => Frame::Error(parse(k, payload)?),
        })
    }
}

fn json<T: serde::Serialize>(m: &T) -> Vec<u8> {
    serde_json::to_vec(m).expect("protocol messages always serialize")
}

fn parse<T: serde::de::DeserializeOwned>(kind: FrameKind, payload: &[u8]) -> Result<T, ProtoError> {
    serde_json::from_slice(payload).map_err(|e| ProtoError::BadJson(kind, e.to_string()))
}

/// Why a frame could not be read or written.
#[derive(Debug)]
pub enum ProtoError {
    /// The underlying stream failed.
    Io(io::Error),
    /// The peer closed the stream cleanly between frames.
    Closed,
    /// The stream ended inside a frame.
    Truncated,
    /// `len` was 0 or above [`MAX_FRAME_LEN`].
    BadLength(u32),
    /// The kind byte is not defined by this protocol version.
    UnknownKind(u8),
    /// A control payload was not the JSON object its kind requires.
    BadJson(FrameKind, String),
}

impl ProtoError {
    /// The stable error code sent to the peer in an ERROR frame.
    pub fn code(&self) -> &'static str {
        match self {
            ProtoError::Io(_) | ProtoError::Closed | ProtoError::Truncated => "bad_frame",
            ProtoError::BadLength(_) => "bad_frame",
            ProtoError::UnknownKind(_) => "unknown_kind",
            ProtoError::BadJson(..) => "bad_json",
        }
    }
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::Io(e) => write!(f, "i/o error: {e}"),
            ProtoError::Closed => write!(f, "connection closed"),
            ProtoError::Truncated => write!(f, "connection closed in the middle of a frame"),
            ProtoError::BadLength(n) => {
                write!(f, "frame length {n} outside 1..={MAX_FRAME_LEN}")
            }
            ProtoError::UnknownKind(k) => write!(f, "unknown frame kind 0x{k:02x}"),
            ProtoError::BadJson(k, e) => write!(f, "bad {k:?} payload: {e}"),
        }
    }
}

impl std::error::Error for ProtoError {}

impl From<io::Error> for ProtoError {
    fn from(e: io::Error) -> Self {
        ProtoError::Io(e)
    }
}

/// Reads one frame. Returns [`ProtoError::Closed`] on EOF before the first byte of a frame.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Frame, ProtoError> {
    let mut hdr = [0u8; 5];
    let mut got = 0;
    while got < hdr.len() {
        match r.read(&mut hdr[got..]) {
            Ok(0) if got == 0 => return Err(ProtoError::Closed),
            Ok(0) => return Err(ProtoError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    if len == 0 || len > MAX_FRAME_LEN {
        return Err(ProtoError::BadLength(len));
    }
    let mut payload = vec![0u8; len as usize - 1];
    r.read_exact(&mut payload).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ProtoError::Truncated,
        _ => ProtoError::Io(e),
    })?;
    Frame::decode(hdr[4], &payload)
}

/// Writes one frame with a single `write_all` and flushes.
pub fn write_frame<W: Write>(w: &mut W, frame: &Frame) -> io::Result<()> {
    w.write_all(&frame.encode())?;
    w.flush()
}
