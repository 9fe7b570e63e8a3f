//! Bodies passing through the proxy: a [`Pipe`] wraps the body coming from one side and
//! yields what the other side gets, chunk by chunk, never buffering more than the rewriter's
//! held-back tail: content decoding, secret substitution or scrubbing, metering, byte
//! counting, and the end-of-message hooks (meter `finish` before the message's end is passed
//! on; audit record when it ends or is dropped).

use super::decode::Decoder;
use crate::meter::usage::strip::UsageChunkFilter;
use crate::meter::{CallMeter, Outcome};
use crate::secrets::rewrite::{Blocked, Stream};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Errors inside proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy hands to hyper.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A complete small body (error pages).
pub fn full(text: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(text.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Where a blocked request body records why (read by the request handler to answer 403).
pub type BlockSlot = Arc<Mutex<Option<String>>>;

/// Called once when a message ends: `(bytes passed on, None)` or `(bytes, Some(error))`.
pub type OnEnd = Box<dyn FnOnce(u64, Option<String>) + Send>;

/// Checks or rewrites trailers (RFC 9110 §6.5); an error refuses the message.
pub type TrailerFn = Box<dyn Fn(&mut http::HeaderMap) -> Result<(), String> + Send>;

/// A transforming body.
pub struct Pipe<B> {
    trailers: Option<TrailerFn>,
    inner: B,
    decoder: Option<Decoder>,
    filter: Option<UsageChunkFilter>,
    rewrite: Option<Stream>,
    meter: Option<CallMeter>,
    on_end: Option<OnEnd>,
    blocked: Option<BlockSlot>,
    counter: Option<Arc<AtomicU64>>,
    bytes: u64,
    pending_trailers: Option<Frame<Bytes>>,
    ended: bool,
    exact: bool,
}

impl<B> Pipe<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// A pipe over `inner` doing nothing yet (see the `with_*` builders). `exact`: the output
    /// has the input's length (size hint passed on).
    pub fn new(inner: B) -> Pipe<B> {
        Pipe {
            trailers: None,
            inner,
            decoder: None,
            filter: None,
            rewrite: None,
            meter: None,
            on_end: None,
            blocked: None,
            counter: None,
            bytes: 0,
            pending_trailers: None,
            ended: false,
            exact: true,
        }
    }

    /// Decode the content coding first (the output is identity-coded).
    pub fn with_decoder(mut self, d: Option<Decoder>) -> Self {
        self.exact &= d.is_none();
        self.decoder = d;
        self
    }

    /// Remove the usage-only chunk from an OpenAI Chat event stream (after decoding; the meter
    /// sees the bytes before this filter).
    pub fn with_filter(mut self, f: Option<UsageChunkFilter>) -> Self {
        self.exact &= f.is_none();
        self.filter = f;
        self
    }

    /// Rewrite (substitute, scrub, block) the decoded bytes; `exact`: lengths are preserved.
    pub fn with_rewrite(mut self, r: Option<Stream>, exact: bool) -> Self {
        self.exact &= r.is_none() || exact;
        self.rewrite = r;
        self
    }

    /// Meter the output; `finish` is called before the message end is passed on.
    pub fn with_meter(mut self, m: Option<CallMeter>) -> Self {
        self.exact &= m.is_none();
        self.meter = m;
        self
    }

    /// Trailers pass through `f` (scrubbed, or checked for placeholders).
    pub fn with_trailers(mut self, f: TrailerFn) -> Self {
        self.trailers = Some(f);
        self
    }

    /// Called once at the end (complete, failed, or dropped early).
    pub fn on_end(mut self, f: OnEnd) -> Self {
        self.on_end = Some(f);
        self
    }

    /// Where a [`Blocked`] rewrite records its reason.
    pub fn block_slot(mut self, slot: BlockSlot) -> Self {
        self.blocked = Some(slot);
        self
    }

    /// Adds the output byte count to `c` as it goes.
    pub fn count_into(mut self, c: Arc<AtomicU64>) -> Self {
        self.counter = Some(c);
        self
    }

    fn transform(&mut self, data: Bytes) -> Result<Bytes, BoxError> {
        let data = match &mut self.decoder {
            Some(d) => Bytes::from(
                d.push(&data)
                    .map_err(|e| format!("cannot decode the body: {e}"))?,
            ),
            None => data,
        };
        let data = self.filtered(data, false);
        self.rewrite_decoded(data, false)
    }

    /// The decoded bytes through the usage-chunk filter, if any (metered before it).
    fn filtered(&mut self, data: Bytes, last: bool) -> Bytes {
        let Some(f) = &mut self.filter else {
            return data;
        };
        if let Some(m) = &mut self.meter {
            m.body_chunk(&data);
        }
        let out = f.push(data);
        if last {
            [out, f.finish()].concat().into()
        } else {
            out
        }
    }

    /// Decoder tail + rewriter tail at the end of the message.
    fn flush(&mut self) -> Result<Bytes, BoxError> {
        let last = match &mut self.decoder {
            Some(d) => Bytes::from(
                d.finish()
                    .map_err(|e| format!("cannot decode the body: {e}"))?,
            ),
            None => Bytes::new(),
        };
        let last = self.filtered(last, true);
        self.rewrite_decoded(last, true)
    }

    fn rewrite_decoded(&mut self, data: Bytes, last: bool) -> Result<Bytes, BoxError> {
        let Some(r) = &mut self.rewrite else {
            return Ok(data);
        };
        let res = match r.push(data) {
            Ok(out) if last => r.finish().map(|tail| [out, tail].concat().into()),
            other => other,
        };
        res.map_err(|b| self.block(b))
    }

    fn block(&mut self, b: Blocked) -> BoxError {
        if let Some(slot) = &self.blocked {
            *slot.lock().unwrap() = Some(b.0.clone());
        }
        b.0.into()
    }

    fn account(&mut self, out: &Bytes) {
        self.bytes += out.len() as u64;
        if let Some(c) = &self.counter {
            c.fetch_add(out.len() as u64, Ordering::Relaxed);
        }
        if let (Some(m), None) = (&mut self.meter, &self.filter) {
            m.body_chunk(out);
        }
    }

    fn end(&mut self, error: Option<String>) {
        if let Some(m) = self.meter.take() {
            m.finish(match &error {
                None => Outcome::Complete,
                Some(e) => Outcome::Aborted(e.clone()),
            });
        }
        if let Some(f) = self.on_end.take() {
            f(self.bytes, error);
        }
    }

    fn fail(&mut self, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.ended = true;
        self.end(Some(e.to_string()));
        Poll::Ready(Some(Err(e)))
    }

    /// Data and trailers at the end of the message: flush, finish the meter, pass on the tail
    /// (then the trailers, if any).
    fn finish_message(
        &mut self,
        trailers: Option<Frame<Bytes>>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let trailers = match (trailers.map(Frame::into_trailers), &self.trailers) {
            (Some(Ok(mut t)), Some(f)) => match f(&mut t) {
                Ok(()) => Some(Frame::trailers(t)),
                Err(why) => {
                    let e = self.block(Blocked(why));
                    return self.fail(e);
                }
            },
            (Some(Ok(t)), None) => Some(Frame::trailers(t)),
            (Some(Err(other)), _) => Some(other),
            (None, _) => None,
        };
        let tail = match self.flush() {
            Ok(t) => t,
            Err(e) => return self.fail(e),
        };
        self.account(&tail);
        self.ended = true;
        self.end(None);
        if tail.is_empty() {
            return Poll::Ready(trailers.map(Ok));
        }
        self.pending_trailers = trailers;
        Poll::Ready(Some(Ok(Frame::data(tail))))
    }
}

impl<B> Body for Pipe<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(this.pending_trailers.take().map(Ok));
            }
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return this.finish_message(None),
                Poll::Ready(Some(Err(e))) => return this.fail(e.into()),
                Poll::Ready(Some(Ok(f))) => f,
            };
            match frame.into_data() {
                Ok(data) => match this.transform(data) {
                    Ok(out) if out.is_empty() => continue,
                    Ok(out) => {
                        this.account(&out);
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    Err(e) => return this.fail(e),
                },
                Err(frame) => return this.finish_message(Some(frame)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.pending_trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact && !self.ended {
            self.inner.size_hint()
        } else {
            SizeHint::default()
        }
    }
}

impl<B> Drop for Pipe<B> {
    fn drop(&mut self) {
        if !self.ended {
            if let Some(m) = self.meter.take() {
                m.finish(Outcome::Aborted(
                    "the guest closed the stream before its end".into(),
                ));
            }
            if let Some(f) = self.on_end.take() {
                f(self.bytes, Some("closed before the end".into()));
            }
        }
    }
}
