//! The client socket with its read and write buffers: framed reads bounded by
//! `max_message_size`, buffered writes, byte counters. No protocol decisions here.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::protocol::frame::{peek_header, try_frame, Frame, FrameError, Header};
use crate::stream::Stream;

/// What can go wrong reading from or writing to the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientIoError {
    #[error("client closed the connection")]
    Closed,
    #[error("client I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// A client connection after startup (plain TCP or TLS).
pub struct ClientConn {
    stream: Stream,
    rbuf: BytesMut,
    /// Replies gathered for the client, written by [`ClientConn::flush`].
    pub wbuf: BytesMut,
    max_message_size: usize,
}

impl ClientConn {
    /// Wraps a stream; `leftover` holds bytes already read past the startup packet.
    pub fn new(stream: Stream, leftover: BytesMut, max_message_size: usize) -> ClientConn {
        ClientConn {
            stream,
            rbuf: leftover,
            wbuf: BytesMut::new(),
            max_message_size,
        }
    }

    /// A whole frame if one is already buffered, without reading.
    pub fn buffered_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        try_frame(&mut self.rbuf, self.max_message_size)
    }

    /// The header of the next message, if five bytes are buffered.
    pub fn peek_header(&self) -> Result<Option<Header>, FrameError> {
        peek_header(&self.rbuf)
    }

    /// Up to `max` buffered bytes, as they are (for streaming a large message through).
    pub fn take_buffered(&mut self, max: usize) -> Bytes {
        let n = max.min(self.rbuf.len());
        self.rbuf.split_to(n).freeze()
    }

    /// Reads until one whole frame is buffered and returns it.
    /// Cancel-safe: a frame is never half consumed.
    pub async fn read_frame(&mut self) -> Result<Frame, ClientIoError> {
        loop {
            if let Some(frame) = self.buffered_frame()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// Reads more bytes into the buffer; `Closed` on EOF. Cancel-safe.
    pub async fn fill(&mut self) -> Result<usize, ClientIoError> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(8192);
        }
        let n = self.stream.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            return Err(ClientIoError::Closed);
        }
        Ok(n)
    }

    /// Drops every byte read and not yet handled (what a client sends after its Terminate).
    pub fn discard_buffered(&mut self) {
        self.rbuf.clear();
    }

    /// Reads ahead (up to `limit` bytes buffered) until the client closes its socket or fails,
    /// and returns why; used while the client waits for something else, so a client that left
    /// stops waiting. Past `limit` it only waits.
    pub async fn gone(&mut self, limit: usize) -> ClientIoError {
        while self.rbuf.len() < limit {
            if let Err(e) = self.fill().await {
                return e;
            }
        }
        std::future::pending().await
    }

    /// Writes everything gathered in `wbuf`.
    pub async fn flush(&mut self) -> Result<usize, ClientIoError> {
        let n = self.wbuf.len();
        if n > 0 {
            let now = self.stream.write_without_waiting(&self.wbuf)?;
            if now < n {
                self.stream.write_all(&self.wbuf[now..]).await?;
            }
            self.wbuf.clear();
        }
        Ok(n)
    }

    /// Writes a chunk directly (large forwarded data), after anything already gathered.
    pub async fn write_through(&mut self, bytes: &[u8]) -> Result<(), ClientIoError> {
        let now = self.write_through_now(bytes)?;
        if now < bytes.len() {
            self.flush().await?;
            self.stream.write_all(&bytes[now..]).await?;
        }
        Ok(())
    }

    /// The part of [`ClientConn::write_through`] that never waits: how much of `bytes` the
    /// socket took now (nothing while gathered bytes wait to go first, or on TLS).
    pub fn write_through_now(&mut self, bytes: &[u8]) -> Result<usize, ClientIoError> {
        if !self.wbuf.is_empty() {
            return Ok(0);
        }
        Ok(self.stream.write_without_waiting(bytes)?)
    }

    /// Flushes and shuts the write side down; errors are irrelevant at this point.
    pub async fn close(mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}
