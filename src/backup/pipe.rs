//! Two-stage pipelines for archives: compression or decompression on a thread of its own,
//! so that it overlaps the work on the other side (receiving the snapshot and hashing it on
//! the way in; hashing the entries on the way back). On a 2-core control-plane node this is
//! what keeps `backup` close to `etcdctl snapshot save`: zstd and the three digests of every
//! snapshot byte otherwise run one after the other on one core.
//!
//! Memory stays bounded: at most `DEPTH` chunks of `CHUNK` bytes are in flight.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Bytes handed to the other thread at a time.
pub const CHUNK: usize = 1 << 20;
/// Chunks in flight between the two threads.
pub const DEPTH: usize = 4;

enum Msg {
    Data(Vec<u8>),
    End,
}

/// A writer whose bytes are written by a thread of its own into `sink`; `finish` hands the
/// sink to a closing step on that thread (zstd's end frame, a flush) and returns its result.
/// Dropped without `finish` (an error or Ctrl-C on the other side), the thread stops without
/// the closing step: a half archive never gets a valid end.
pub struct PipeWriter<T> {
    buf: Vec<u8>,
    tx: Option<SyncSender<Msg>>,
    handle: Option<JoinHandle<io::Result<T>>>,
}

impl<T: Send + 'static> PipeWriter<T> {
    pub fn spawn<W, F>(mut sink: W, finish: F) -> io::Result<Self>
    where
        W: Write + Send + 'static,
        F: FnOnce(W) -> io::Result<T> + Send + 'static,
    {
        let (tx, rx) = sync_channel::<Msg>(DEPTH);
        let handle = std::thread::Builder::new()
            .name("archive-writer".into())
            .spawn(move || {
                for msg in rx {
                    match msg {
                        Msg::Data(chunk) => sink.write_all(&chunk)?,
                        Msg::End => return finish(sink),
                    }
                }
                Err(io::Error::other("the archive writer was abandoned"))
            })?;
        Ok(PipeWriter {
            buf: Vec::with_capacity(CHUNK),
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// The writer thread's own error, once it has stopped (it only stops early on one).
    fn thread_error(&mut self) -> io::Error {
        self.tx = None;
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => io::Error::other("the archive writer thread panicked"),
            _ => io::Error::other("the archive writer stopped"),
        }
    }

    fn send(&mut self, msg: Msg) -> io::Result<()> {
        let Some(tx) = &self.tx else {
            return Err(io::Error::other("the archive writer stopped"));
        };
        if tx.send(msg).is_err() {
            return Err(self.thread_error());
        }
        Ok(())
    }

    /// Write what is buffered, run the closing step, and return its result.
    pub fn finish(mut self) -> io::Result<T> {
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            self.send(Msg::Data(chunk))?;
        }
        self.send(Msg::End)?;
        self.tx = None;
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the archive writer thread panicked")),
            None => Err(io::Error::other("the archive writer stopped")),
        }
    }
}

impl<T: Send + 'static> Write for PipeWriter<T> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            self.send(Msg::Data(chunk))?;
        }
        Ok(data.len())
    }

    /// Buffered bytes reach the sink in order before `finish` closes it; a flush here would
    /// only make smaller chunks.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<T> Drop for PipeWriter<T> {
    fn drop(&mut self) {
        // Closing the channel without `End` stops the thread without its closing step;
        // wait for it so that nothing writes after its owner is gone.
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A reader fed by a thread that reads `source` ahead (decompressing, for one), `DEPTH`
/// chunks at most. An error of the source comes out of `read` in its place in the stream.
pub struct PipeReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
}

impl PipeReader {
    pub fn spawn<R: Read + Send + 'static>(mut source: R) -> io::Result<Self> {
        let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(DEPTH);
        std::thread::Builder::new()
            .name("archive-reader".into())
            .spawn(move || {
                loop {
                    let mut chunk = vec![0u8; CHUNK];
                    let mut filled = 0;
                    // Fill whole chunks: a decoder hands out a frame's worth at a time.
                    let end = loop {
                        match source.read(&mut chunk[filled..]) {
                            Ok(0) => break Ok(true),
                            Ok(n) => {
                                filled += n;
                                if filled == chunk.len() {
                                    break Ok(false);
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => break Err(e),
                        }
                    };
                    chunk.truncate(filled);
                    if filled > 0 && tx.send(Ok(chunk)).is_err() {
                        return;
                    }
                    match end {
                        Ok(false) => {}
                        Ok(true) => return,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
            })?;
        Ok(PipeReader {
            rx,
            cur: Vec::new(),
            pos: 0,
            done: false,
        })
    }
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that fails after `limit` bytes, as a full disk does.
    struct Full {
        written: usize,
        limit: usize,
    }

    impl Write for Full {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            if self.written + data.len() > self.limit {
                return Err(io::Error::from_raw_os_error(28));
            }
            self.written += data.len();
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn bytes_arrive_in_order_and_finish_runs_last() {
        let data = pattern(3 * CHUNK + 12345);
        let mut w = PipeWriter::spawn(Vec::new(), |mut v: Vec<u8>| {
            v.extend_from_slice(b"END");
            Ok(v)
        })
        .unwrap();
        for piece in data.chunks(70_000) {
            w.write_all(piece).unwrap();
        }
        let out = w.finish().unwrap();
        assert_eq!(&out[..data.len()], &data[..]);
        assert_eq!(&out[data.len()..], b"END");
    }

    #[test]
    fn the_sinks_error_comes_back_to_the_writer() {
        let mut w = PipeWriter::spawn(
            Full {
                written: 0,
                limit: CHUNK + 10,
            },
            |_| Ok(()),
        )
        .unwrap();
        let data = pattern(CHUNK);
        let mut err = None;
        for _ in 0..(2 * DEPTH + 4) {
            if let Err(e) = w.write_all(&data) {
                err = Some(e);
                break;
            }
        }
        let err = err.or_else(|| w.finish().err()).expect("a full sink fails");
        assert_eq!(err.raw_os_error(), Some(28), "{err}");
    }

    #[test]
    fn a_dropped_writer_skips_the_closing_step() {
        let closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = closed.clone();
        let mut w = PipeWriter::spawn(Vec::new(), move |_| {
            c.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        w.write_all(&pattern(2 * CHUNK)).unwrap();
        drop(w);
        assert!(!closed.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn the_reader_yields_the_source_then_its_error() {
        let data = pattern(2 * CHUNK + 999);
        let mut r = PipeReader::spawn(io::Cursor::new(data.clone())).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);

        // A source that fails after some bytes: the bytes first, then the error.
        let failing = io::Cursor::new(pattern(1000)).chain(FailingRead);
        let mut r = PipeReader::spawn(failing).unwrap();
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(out, pattern(1000));
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    struct FailingRead;
    impl Read for FailingRead {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::UnexpectedEof.into())
        }
    }
}
