//! The attach socket: `containers/<name>/attach.sock`, served by the monitor, used by `attach`
//! and `start -a -i`.
//!
//! Monitor -> client: the container's output as Docker's stdcopy frames,
//! `[stream, 0, 0, 0, len u32 BE] data` (stream 1 stdout, 2 stderr), from the moment the client
//! connects (earlier output is in the log). Client -> monitor: frames of the same shape whose first
//! byte says what they are: 0 stdin bytes, 1 a terminal size (rows u16 BE, cols u16 BE), 2 end
//! of input. The socket is bound and connected through `/proc/self/fd/N/attach.sock` (N the
//! container directory), so a long store path never hits the 108-byte socket path limit.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rbuild_cache::Store;

use crate::{cerr, io_err, Error};

/// The socket's name in the container's directory.
pub const SOCKET: &str = "attach.sock";

/// Frame kinds from a client.
const STDIN: u8 = 0;
const RESIZE: u8 = 1;
const EOF: u8 = 2;

fn frame(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&[kind, 0, 0, 0]);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes());
    f.extend_from_slice(data);
    f
}

fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut h = [0u8; 8];
    match r.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
    if len > 1 << 20 {
        return Err(io::Error::other("attach frame too large"));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data)?;
    Ok(Some((h[0], data)))
}

/// Where the container's input goes: its stdin pipe, or the pty master (which also takes
/// resizes).
pub(crate) enum Input {
    Pipe(Box<dyn Write + Send>),
    Pty(File),
}

/// The monitor's side: connected clients and the current run's input.
#[derive(Clone, Default)]
pub(crate) struct Hub {
    clients: Arc<Mutex<Vec<UnixStream>>>,
    input: Arc<Mutex<Option<Input>>>,
}

impl Hub {
    /// Binds the socket in `dir` and accepts clients on a thread for the monitor's life.
    pub(crate) fn serve(&self, dir: &Path) -> io::Result<()> {
        let d = File::open(dir)?;
        let path = format!("/proc/self/fd/{}/{SOCKET}", d.as_raw_fd());
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        drop(d);
        let hub = self.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if let Ok(w) = conn.try_clone() {
                    hub.clients
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(w);
                }
                let hub = hub.clone();
                std::thread::spawn(move || hub.client_input(conn));
            }
        });
        Ok(())
    }

    fn client_input(&self, mut conn: UnixStream) {
        while let Ok(Some((kind, data))) = read_frame(&mut conn) {
            let mut g = self.input.lock().unwrap_or_else(|p| p.into_inner());
            match (kind, g.as_mut()) {
                (STDIN, Some(Input::Pipe(w))) => {
                    let _ = w.write_all(&data).and_then(|_| w.flush());
                }
                (STDIN, Some(Input::Pty(f))) => {
                    let _ = f.write_all(&data);
                }
                (RESIZE, Some(Input::Pty(f))) if data.len() == 4 => {
                    let ws = libc::winsize {
                        ws_row: u16::from_be_bytes([data[0], data[1]]),
                        ws_col: u16::from_be_bytes([data[2], data[3]]),
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    // SAFETY: TIOCSWINSZ on the pty master we hold, with a valid winsize.
                    unsafe { libc::ioctl(f.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                }
                // End of input closes a piped stdin (as `docker run -i` at EOF); a terminal
                // stays open.
                (EOF, Some(Input::Pipe(_))) => *g = None,
                _ => {}
            }
        }
    }

    /// Sets (or clears) where input goes for the current run.
    pub(crate) fn set_input(&self, input: Option<Input>) {
        *self.input.lock().unwrap_or_else(|p| p.into_inner()) = input;
    }

    /// Sends output to every client (dropping those that went away).
    pub(crate) fn broadcast(&self, stream: u8, data: &[u8]) {
        let f = frame(stream, data);
        let mut g = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        g.retain_mut(|c| c.write_all(&f).is_ok());
    }

    /// Disconnects every client (the container ended).
    pub(crate) fn close_clients(&self) {
        let mut g = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        for c in g.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A client's connection to a running container's monitor.
pub struct Attached {
    conn: UnixStream,
}

impl Attached {
    /// Connects to the monitor of running container `name`.
    pub fn connect(store: &Store, name: &str) -> Result<Attached, Error> {
        let st = crate::state::get(store, name)?;
        if !st.supervised {
            return Err(cerr(format!(
                "You cannot attach to a stopped container, start it first ({})",
                st.record.name
            )));
        }
        let dir = store.container_dir(&st.record.name);
        let d = File::open(&dir).map_err(io_err(format!("opening {}", dir.display())))?;
        let path = format!("/proc/self/fd/{}/{SOCKET}", d.as_raw_fd());
        let conn = UnixStream::connect(&path).map_err(io_err(format!(
            "connecting to {}",
            dir.join(SOCKET).display()
        )))?;
        Ok(Attached { conn })
    }

    /// A handle to send input with (from another thread).
    pub fn sender(&self) -> Result<Sender, Error> {
        Ok(Sender(
            self.conn.try_clone().map_err(io_err("dup attach socket"))?,
        ))
    }

    /// The next piece of output: (1 stdout | 2 stderr, bytes), `None` once the container ended.
    pub fn next_output(&mut self) -> Result<Option<(u8, Vec<u8>)>, Error> {
        read_frame(&mut self.conn).map_err(io_err("reading from the attach socket"))
    }
}

/// Sends a client's input.
pub struct Sender(UnixStream);

impl Sender {
    /// Bytes for the container's stdin.
    pub fn stdin(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.write_all(&frame(STDIN, data))
    }

    /// A new terminal size.
    pub fn resize(&mut self, rows: u16, cols: u16) -> io::Result<()> {
        let mut d = rows.to_be_bytes().to_vec();
        d.extend_from_slice(&cols.to_be_bytes());
        self.0.write_all(&frame(RESIZE, &d))
    }

    /// End of input.
    pub fn eof(&mut self) -> io::Result<()> {
        self.0.write_all(&frame(EOF, &[]))
    }

    /// Disconnects (both directions): the output reader then sees the end.
    pub fn close(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

/// Keeps the pty master's duplicate used for input alive as a `File`.
pub(crate) fn pty_input(master: &OwnedFd) -> io::Result<Input> {
    Ok(Input::Pty(File::from(master.try_clone()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let f = frame(2, b"hello");
        assert_eq!(&f[..8], &[2, 0, 0, 0, 0, 0, 0, 5]);
        let mut r = &f[..];
        assert_eq!(read_frame(&mut r).unwrap(), Some((2, b"hello".to_vec())));
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }
}
