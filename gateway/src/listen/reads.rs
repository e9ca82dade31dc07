//! Reads of a bounded size for hyper's HTTP/1 connections.
//!
//! hyper sizes its read buffer by what the last reads brought: a read that fills the
//! buffer doubles the next one, up to about 400 KiB. Request bodies of 64 KiB arriving
//! over loopback fill every read, so each keep-alive connection soon reserves (and, as its
//! allocator reuses the blocks, keeps resident) buffers of several hundred KiB: 32
//! connections posting 64 KiB held about 10 MB. Handing the socket no more than
//! [`READ_SIZE`] per read keeps hyper's buffers at twice that, for a few more `read`
//! calls on large bodies. 16 KiB rather than 32: with the bodies read ahead bounded
//! (`--post-read-ahead`), the buffers of the connections waiting for a slot are most of
//! what the 64 KiB echo keeps resident (mimalloc's share 6.1 -> 4.7 MB, requests/s level
//! in alternating runs).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one read asks of the socket.
pub(crate) const READ_SIZE: usize = 16 * 1024;

/// A stream whose reads ask for at most [`READ_SIZE`] bytes; writes pass through.
#[derive(Debug)]
pub(crate) struct SmallReads<S>(pub(crate) S);

#[allow(unsafe_code)] // one block, proven sound where it stands
impl<S: AsyncRead + Unpin> AsyncRead for SmallReads<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() <= READ_SIZE {
            return Pin::new(&mut self.0).poll_read(cx, buf);
        }
        let mut part = buf.take(READ_SIZE);
        ready!(Pin::new(&mut self.0).poll_read(cx, &mut part))?;
        let n = part.filled().len();
        // SAFETY: `part` is a view of the first READ_SIZE bytes of `buf`'s unfilled
        // region (`ReadBuf::take`), and its first `n` bytes are filled, hence initialized,
        // by the read above. So `buf`'s first `n` unfilled bytes are initialized, which is
        // what `assume_init(n)` asserts.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SmallReads<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn reads_stop_at_the_bound_and_bring_every_byte() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut reader = SmallReads(&data[..]);
        let mut buf = vec![0u8; 150_000];
        let n = reader.read(&mut buf).await.unwrap();
        assert_eq!(n, READ_SIZE, "one read asks for at most READ_SIZE bytes");
        assert_eq!(&buf[..n], &data[..n]);
        let mut small = [0u8; 100];
        assert_eq!(
            reader.read(&mut small).await.unwrap(),
            100,
            "small reads pass through"
        );
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        let mut all = buf[..n].to_vec();
        all.extend_from_slice(&small);
        all.extend_from_slice(&rest);
        assert_eq!(all, data);
    }
}
