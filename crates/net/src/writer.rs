//! The batched frame writer: frames queued by any number of senders go out on one stream in
//! batches, so a burst of frames costs one write syscall, not one each.
//!
//! Owns: the order of frames on one stream and when it is flushed — after everything already
//! queued has been buffered, never with frames waiting. Bodies too large for the buffer are
//! written straight through (`BufWriter`), never copied into it.
//!
//! Must never: add a task hop or an allocation per frame (the writer runs on the task that
//! drains the queue, and reuses its one scratch list of frames), or look inside a frame.

use std::future::Future;
use std::time::Duration;

use tessera_proto::frame::Frame;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

/// Bytes buffered before a write reaches the socket, unless the queue runs empty first.
pub const BUFFER_BYTES: usize = 256 * 1024;

/// An item a [`FrameWriter`] takes off its queue: one frame or several, encoded on the
/// writer's task (so whoever queues an item pays nothing for its encoding).
pub trait Outgoing: Send {
    /// Appends this item's frames, in order, to `out`. The item itself is dropped once they
    /// are written, so it may carry what must live until then (a flow-control permit).
    fn frames(&mut self, out: &mut Vec<Frame>);
}

impl Outgoing for Frame {
    fn frames(&mut self, out: &mut Vec<Frame>) {
        out.push(take(self));
    }
}

/// A frame and what to hold until it is written (a permit of the sender's in-flight budget).
impl<G: Send> Outgoing for (Frame, G) {
    fn frames(&mut self, out: &mut Vec<Frame>) {
        out.push(take(&mut self.0));
    }
}

/// Moves a frame out, leaving an empty one (empty `Bytes` cost no allocation).
fn take(f: &mut Frame) -> Frame {
    Frame::with_tail(
        f.kind,
        f.request_id,
        std::mem::take(&mut f.body),
        std::mem::take(&mut f.tail),
    )
}

/// The queue a [`FrameWriter`] drains: tokio's bounded and unbounded channels, or an adapter
/// that gathers several queued messages into one item (the managers' Raft batches).
pub trait Queue: Send {
    /// What the queue holds.
    type Item: Outgoing;
    /// The next item, waiting for one; `None` once every sender is gone and the queue empty.
    fn recv(&mut self) -> impl Future<Output = Option<Self::Item>> + Send;
    /// The next item if one is queued now.
    fn try_recv(&mut self) -> Option<Self::Item>;
}

impl<T: Outgoing> Queue for mpsc::Receiver<T> {
    type Item = T;
    fn recv(&mut self) -> impl Future<Output = Option<T>> + Send {
        mpsc::Receiver::recv(self)
    }
    fn try_recv(&mut self) -> Option<T> {
        mpsc::Receiver::try_recv(self).ok()
    }
}

impl<T: Outgoing> Queue for mpsc::UnboundedReceiver<T> {
    type Item = T;
    fn recv(&mut self) -> impl Future<Output = Option<T>> + Send {
        mpsc::UnboundedReceiver::recv(self)
    }
    fn try_recv(&mut self) -> Option<T> {
        mpsc::UnboundedReceiver::try_recv(self).ok()
    }
}

/// Writes frames to one stream through a [`BUFFER_BYTES`] buffer.
pub struct FrameWriter<W> {
    w: BufWriter<W>,
    /// Longest a write or flush may wait on the stream (a peer that stopped reading).
    timeout: Option<Duration>,
    /// The frames of the item being written (kept to reuse its allocation).
    scratch: Vec<Frame>,
}

impl<W: AsyncWrite + Unpin + Send> FrameWriter<W> {
    /// A writer on `w`, with no time limit on writes.
    pub fn new(w: W) -> Self {
        FrameWriter {
            w: BufWriter::with_capacity(BUFFER_BYTES, w),
            timeout: None,
            scratch: Vec::new(),
        }
    }

    /// Fails any write or flush that waits on the stream longer than `timeout`
    /// ([`std::io::ErrorKind::TimedOut`]).
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Buffers one frame (header, body and tail, the body never copied when it is larger
    /// than the buffer). A body over the frame limit is an error, never sent.
    pub async fn write(&mut self, f: &Frame) -> std::io::Result<()> {
        match self.timeout {
            None => crate::write_frame(&mut self.w, f).await,
            Some(t) => limit(t, crate::write_frame(&mut self.w, f)).await,
        }
    }

    /// Writes out whatever is buffered.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        match self.timeout {
            None => self.w.flush().await,
            Some(t) => limit(t, self.w.flush()).await,
        }
    }

    /// Writes `first` and every item queued behind it, then flushes once.
    pub async fn write_batch<Q: Queue>(
        &mut self,
        first: Q::Item,
        queue: &mut Q,
    ) -> std::io::Result<()> {
        let mut next = Some(first);
        while let Some(mut item) = next {
            item.frames(&mut self.scratch);
            let mut frames = std::mem::take(&mut self.scratch);
            let mut written = Ok(());
            for f in frames.drain(..) {
                written = self.write(&f).await;
                if written.is_err() {
                    break;
                }
            }
            self.scratch = frames;
            written?;
            drop(item);
            next = queue.try_recv();
        }
        self.flush().await
    }

    /// Writes what `queue` carries, batch by batch ([`FrameWriter::write_batch`]), until
    /// every sender is gone (`Ok`) or a write fails (`Err`: the stream is unusable).
    pub async fn write_queue<Q: Queue>(&mut self, queue: &mut Q) -> std::io::Result<()> {
        while let Some(first) = queue.recv().await {
            self.write_batch(first, queue).await?;
        }
        Ok(())
    }
}

async fn limit(t: Duration, io: impl Future<Output = std::io::Result<()>>) -> std::io::Result<()> {
    tokio::time::timeout(t, io).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no progress writing to the peer within {t:?}"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use tessera_proto::frame::{HEADER_LEN, Kind};

    use crate::FrameReader;

    /// A stream that records the size of every write call it receives.
    #[derive(Clone, Default)]
    struct Recorder {
        writes: Arc<Mutex<Vec<usize>>>,
        bytes: Arc<Mutex<Vec<u8>>>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.writes.lock().unwrap().push(buf.len());
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn frame(i: u64, len: usize) -> Frame {
        Frame::with_tail(
            Kind::Reply,
            i,
            Bytes::from(vec![1u8; 3]),
            Bytes::from(vec![i as u8; len]),
        )
    }

    /// Frames queued together reach the stream in one write; the stream then carries them
    /// in order, whole.
    #[tokio::test]
    async fn frames_queued_together_go_out_in_one_write() {
        let rec = Recorder::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 0..50 {
            tx.send(frame(i, 100)).unwrap();
        }
        drop(tx);
        FrameWriter::new(rec.clone())
            .write_queue(&mut rx)
            .await
            .unwrap();
        assert_eq!(*rec.writes.lock().unwrap(), vec![50 * (HEADER_LEN + 103)]);
        let bytes = rec.bytes.lock().unwrap().clone();
        let mut r = FrameReader::new(&bytes[..]);
        for i in 0..50 {
            let f = r.next().await.unwrap().unwrap();
            assert_eq!(f.request_id, i);
            assert_eq!(f.body.len(), 103);
        }
        assert!(r.next().await.unwrap().is_none());
    }

    /// What an item holds (a permit) is released only once its frame is written: here,
    /// frames larger than the buffer, on the stream before their item is dropped.
    #[tokio::test]
    async fn an_item_is_dropped_after_its_frame_is_written() {
        struct Guard(Recorder, Arc<Mutex<Vec<usize>>>);
        impl Drop for Guard {
            fn drop(&mut self) {
                let on_stream = self.0.bytes.lock().unwrap().len();
                self.1.lock().unwrap().push(on_stream);
            }
        }
        let rec = Recorder::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = mpsc::channel(8);
        for i in 0..3 {
            let guard = Guard(rec.clone(), seen.clone());
            tx.send((frame(i, BUFFER_BYTES), guard)).await.unwrap();
        }
        drop(tx);
        FrameWriter::new(rec.clone())
            .write_queue(&mut rx)
            .await
            .unwrap();
        let size = HEADER_LEN + 3 + BUFFER_BYTES;
        assert_eq!(*seen.lock().unwrap(), vec![size, 2 * size, 3 * size]);
        // The bodies were written straight through, not copied into the buffer.
        assert!(rec.writes.lock().unwrap().contains(&BUFFER_BYTES));
    }

    /// A body over the frame limit fails the writer instead of going out.
    #[tokio::test]
    async fn a_frame_over_the_limit_fails_the_writer() {
        let rec = Recorder::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let huge = tessera_proto::frame::MAX_BODY as usize + 1;
        tx.send(Frame::new(Kind::Reply, 1, Bytes::from(vec![0u8; huge])))
            .unwrap();
        let err = FrameWriter::new(rec.clone())
            .write_queue(&mut rx)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(rec.bytes.lock().unwrap().is_empty());
    }
}
