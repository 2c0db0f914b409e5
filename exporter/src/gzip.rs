//! The gzip writer of every layer blob rbuild makes (image outputs, push, `--cache-to`).
//!
//! [`GzipWriter`] writes ONE standard gzip member (RFC 1952 header, raw deflate, CRC-32, ISIZE),
//! readable by any gunzip. The input is cut into chunks of [`CHUNK`] bytes (fixed, whatever the
//! sizes of the writes, so the output depends on the input bytes only: layer digests are
//! reproducible). Each chunk is either
//! - **compressed** by one continuous level-1 raw deflate stream (zlib-rs' `deflate_quick`, as
//!   `GzEncoder` at `Compression::fast()` before), ended with a sync flush so the chunk's output
//!   ends on a byte and block boundary; or
//! - **stored** (deflate block type 00, at most 65,535 bytes a block), when a cheap scan finds
//!   almost no repeated 4-byte strings in it (random or already-compressed data), or when its
//!   compressed form is not at least 1/32 smaller than the stored one.
//!
//! Why: `deflate_quick` only emits static-Huffman blocks, 8 or 9 bits per literal, so without
//! matches it makes data 5.5% larger, compresses it at ~65 MB/s and the result inflates at
//! ~250 MB/s; stored blocks cost 5 bytes per 64 KiB and inflate at memcpy speed (a remote-cache
//! hit inflates every layer to check its diff_id).
//!
//! Correctness of mixing: after a sync flush the decoder is on a byte boundary between blocks,
//! so stored blocks can follow and compressed blocks can follow them. Back-references must only
//! name bytes the decoder has, within 32 KiB:
//! - a chunk that went through the compressor and was then emitted stored instead is the same
//!   bytes in the decoder's window, so the compressor's window stays right;
//! - a chunk stored without the compressor seeing it resets the compressor (`reset`: empty
//!   window, it references nothing); before it compresses again it gets the last 32 KiB of the
//!   stream as its dictionary (`set_dictionary`), exactly the decoder's window.
//!
//! The stream ends with an empty final stored block, then CRC-32 and ISIZE.

use std::io::{self, Write};

use flate2::{Compress, Compression, Crc, FlushCompress};

/// Input bytes per decision (compressed or stored).
pub const CHUNK: usize = 128 << 10;
/// Deflate's window: the most history a back-reference may need.
const WINDOW: usize = 32 << 10;
/// The farthest zlib's compressor references (`MAX_DIST`: the window less `MIN_LOOKAHEAD`).
const MAX_DIST: usize = WINDOW - 262;
/// The largest stored block.
const MAX_STORED: usize = 65_535;
/// ID1 ID2, CM = deflate, FLG = 0, MTIME = 0, XFL = 4 (fastest), OS = 255 (unknown): the header
/// flate2's `GzEncoder` writes at level 1.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];
/// BFINAL = 1, BTYPE = 00, LEN = 0, NLEN = !0.
const FINAL_EMPTY_STORED: [u8; 5] = [1, 0, 0, 0xff, 0xff];
/// Bits of the match scan's hash table.
const HASH_BITS: u32 = 12;
/// The match scan looks at 1 position in 2^`SAMPLE_BITS` (content-defined).
const SAMPLE_BITS: u32 = 4;

/// A gzip encoder (one member) that stores the chunks that do not compress; see the module doc.
///
/// Input is buffered up to a chunk; `flush` only flushes the inner writer (emitting a partial
/// chunk would make the output depend on when flush is called). Call [`GzipWriter::finish`]:
/// dropping the writer does not end the stream.
pub struct GzipWriter<W: Write> {
    out: W,
    /// Input not yet emitted (less than a chunk).
    pending: Vec<u8>,
    deflate: Compress,
    /// The last (up to) 32 KiB of a chunk stored without the compressor: its dictionary, set
    /// before it compresses again.
    dictionary: Option<Vec<u8>>,
    crc: Crc,
    /// The compressor's output for the current chunk.
    scratch: Vec<u8>,
    /// The match scan's table: last position + 1 of each hashed 4-byte string.
    table: Box<[u32]>,
    started: bool,
}

impl<W: Write> GzipWriter<W> {
    /// A writer of one gzip member into `out`.
    pub fn new(out: W) -> Self {
        GzipWriter {
            out,
            pending: Vec::with_capacity(CHUNK),
            deflate: Compress::new(Compression::fast(), false),
            dictionary: None,
            crc: Crc::new(),
            scratch: Vec::new(),
            table: vec![0; 1 << HASH_BITS].into_boxed_slice(),
            started: false,
        }
    }

    /// Emits the buffered input and ends the member; returns the inner writer, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            self.chunk(&pending)?;
        }
        self.start()?;
        self.out.write_all(&FINAL_EMPTY_STORED)?;
        self.out.write_all(&self.crc.sum().to_le_bytes())?;
        self.out.write_all(&self.crc.amount().to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn start(&mut self) -> io::Result<()> {
        if !self.started {
            self.out.write_all(&HEADER)?;
            self.started = true;
        }
        Ok(())
    }

    /// Emits `data` (a whole chunk, or the last one) as deflate blocks ending on a byte boundary.
    fn chunk(&mut self, data: &[u8]) -> io::Result<()> {
        self.start()?;
        self.crc.update(data);
        if few_matches(data, &mut self.table) {
            write_stored(&mut self.out, data)?;
            // The compressor did not see `data`: forget its window, remember the decoder's.
            self.deflate.reset();
            let mut dict = self.dictionary.take().unwrap_or_default();
            dict.extend_from_slice(&data[data.len().saturating_sub(WINDOW)..]);
            dict.drain(..dict.len().saturating_sub(WINDOW));
            self.dictionary = Some(dict);
            return Ok(());
        }
        if let Some(dict) = self.dictionary.take() {
            self.deflate
                .set_dictionary(&dict)
                .map_err(io::Error::other)?;
        }
        self.scratch.clear();
        self.scratch.reserve(data.len() + data.len() / 8 + 1024);
        let start = self.deflate.total_in();
        loop {
            let done = (self.deflate.total_in() - start) as usize;
            self.deflate
                .compress_vec(&data[done..], &mut self.scratch, FlushCompress::Sync)
                .map_err(io::Error::other)?;
            let done = (self.deflate.total_in() - start) as usize;
            // The sync flush is complete once all input is in and output space is left over.
            if done == data.len() && self.scratch.len() < self.scratch.capacity() {
                break;
            }
            self.scratch.reserve(data.len() / 8 + 1024);
        }
        if self.scratch.len() + data.len() / 32 < stored_len(data.len()) {
            self.out.write_all(&self.scratch)
        } else {
            // The compressor saw `data`, and the decoder's window gets the same bytes.
            write_stored(&mut self.out, data)
        }
    }
}

impl<W: Write> Write for GzipWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pending.is_empty() && buf.len() >= CHUNK {
            self.chunk(&buf[..CHUNK])?;
            return Ok(CHUNK);
        }
        let n = buf.len().min(CHUNK - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() == CHUNK {
            let pending = std::mem::take(&mut self.pending);
            let r = self.chunk(&pending);
            self.pending = pending;
            self.pending.clear();
            r?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The size of `n` bytes as non-final stored blocks.
fn stored_len(n: usize) -> usize {
    n + 5 * n.div_ceil(MAX_STORED).max(1)
}

/// Writes `data` as non-final stored blocks (the stream is on a byte boundary).
fn write_stored(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    for block in data.chunks(MAX_STORED) {
        let len = block.len() as u16;
        let [l0, l1] = len.to_le_bytes();
        let [n0, n1] = (!len).to_le_bytes();
        out.write_all(&[0, l0, l1, n0, n1])?;
        out.write_all(block)?;
    }
    Ok(())
}

/// Whether `data` looks incompressible to level-1 deflate: hardly any repeated 4-byte strings
/// within its reach. The scan samples by content: a position is looked at only when its 4 bytes
/// hash into 1 of 2^[`SAMPLE_BITS`] classes, so every copy of a repeated string is sampled alike
/// while the table work is done for 1/16 of the positions. Incompressible means: at most 1/1024
/// of the positions are sampled repeats (random data has none; a quarter of text's are), and
/// every 4 KiB block samples enough positions to tell (data of a few distinct strings may sample
/// none). Stops at the first sign of compressible data, so that costs a few KiB of scanning.
fn few_matches(data: &[u8], table: &mut [u32]) -> bool {
    const BLOCK: usize = 4096;
    table.fill(0);
    let limit = data.len() / 1024;
    let mut found = 0;
    let mut picked = [0u32; BLOCK];
    let last = data.len().saturating_sub(3);
    for start in (0..last).step_by(BLOCK) {
        let end = last.min(start + BLOCK);
        // Branch-free: the positions of this block that are sampled.
        let mut k = 0;
        for (i, w) in (start..).zip(data[start..end + 3].windows(4)) {
            picked[k & (BLOCK - 1)] = i as u32;
            k += usize::from(sampled_hash(w).is_some());
        }
        if k < (end - start) / 64 {
            // Random data samples BLOCK/16 ± 16 positions: this is data of few distinct strings.
            return false;
        }
        for &i in &picked[..k] {
            let i = i as usize;
            let w = &data[i..i + 4];
            let h = sampled_hash(w).unwrap_or(0);
            let prev = std::mem::replace(&mut table[h], i as u32 + 1) as usize;
            if prev != 0 && i + 1 - prev <= MAX_DIST && data[prev - 1..prev + 3] == *w {
                found += 1;
                if found > limit {
                    return false;
                }
            }
        }
    }
    true
}

/// The table slot of the 4 bytes `w` when their position is one the scan samples.
#[inline(always)]
fn sampled_hash(w: &[u8]) -> Option<usize> {
    let p = u32::from_le_bytes([w[0], w[1], w[2], w[3]]).wrapping_mul(0x9E37_79B1);
    // The top bits depend on all 32 input bits.
    (p >> (32 - SAMPLE_BITS) == 0)
        .then_some((p >> (32 - SAMPLE_BITS - HASH_BITS)) as usize & ((1 << HASH_BITS) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::{Command, Stdio};

    /// Deterministic pseudo-random bytes (splitmix64).
    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            v.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        v.truncate(n);
        v
    }

    fn text(n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 32);
        let mut i = 0;
        while v.len() < n {
            v.extend_from_slice(format!("usr/lib/file-{i} {}\n", i * 7 % 13).as_bytes());
            i += 1;
        }
        v.truncate(n);
        v
    }

    fn gzip_in(data: &[u8], write_size: usize) -> Vec<u8> {
        let mut w = GzipWriter::new(Vec::new());
        for piece in data.chunks(write_size.max(1)) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        gzip_in(data, 1 << 20)
    }

    /// Decodes `gz` with flate2 (and checks there is one member), gzip(1) and Python's zlib when
    /// they are installed.
    fn check_round_trip(name: &str, data: &[u8], gz: &[u8]) {
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(gz)
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data, "{name}: flate2 round trip");
        let mut one = flate2::read::GzDecoder::new(gz);
        back.clear();
        one.read_to_end(&mut back).unwrap();
        assert!(back == data, "{name}: first member is all of it");
        for (tool, args) in [
            ("gzip", &["-dc"][..]),
            (
                "python3",
                &[
                    "-c",
                    "import sys,zlib; sys.stdout.buffer.write(zlib.decompress(sys.stdin.buffer.read(), 31))",
                ][..],
            ),
        ] {
            match external(tool, args, gz) {
                Some(out) => assert!(out == data, "{name}: {tool} round trip"),
                None => eprintln!("{name}: {tool} not available, skipped"),
            }
        }
    }

    fn external(tool: &str, args: &[&str], input: &[u8]) -> Option<Vec<u8>> {
        let mut child = Command::new(tool)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(out.status.success(), "{tool} failed: {:?}", out.status);
        Some(out.stdout)
    }

    #[test]
    fn random_data_is_stored() {
        let data = random(8 << 20, 1);
        let gz = gzip(&data);
        assert!(
            gz.len() as f64 <= data.len() as f64 * 1.001,
            "{} -> {}",
            data.len(),
            gz.len()
        );
        check_round_trip("random 8 MiB", &data, &gz);
    }

    #[test]
    fn compressible_data_is_compressed() {
        let data = text(4 << 20);
        let gz = gzip(&data);
        let mut before = flate2::write::GzEncoder::new(Vec::new(), Compression::fast());
        before.write_all(&data).unwrap();
        let before = before.finish().unwrap().len();
        // As small as `GzEncoder` at level 1 was, give or take the sync flushes.
        assert!(
            gz.len() <= before + before / 100 + 64,
            "{} -> {} (was {before})",
            data.len(),
            gz.len()
        );
        check_round_trip("text", &data, &gz);
        // No matches but a skewed histogram: level 1 cannot beat stored, which is chosen.
        let hex: Vec<u8> = random(CHUNK, 2)
            .iter()
            .map(|b| b"0123456789abcdef"[usize::from(b & 15)])
            .collect();
        let gz = gzip(&hex);
        assert!(gz.len() <= stored_len(hex.len()) + 30, "{}", gz.len());
        check_round_trip("hex", &hex, &gz);
    }

    #[test]
    fn round_trips_mixes() {
        let t = text(4 * CHUNK);
        let r = random(4 * CHUNK, 3);
        let mut cases: Vec<(String, Vec<u8>)> = vec![
            ("empty".into(), vec![]),
            ("one byte".into(), vec![b'x']),
            ("three bytes".into(), b"abc".to_vec()),
            ("a short text".into(), text(1000)),
        ];
        for n in [
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            2 * CHUNK,
            MAX_STORED,
            MAX_STORED + 1,
        ] {
            cases.push((format!("text {n}"), t[..n].to_vec()));
            cases.push((format!("random {n}"), r[..n].to_vec()));
        }
        // Alternating random and text chunks, and chunks that are half of each.
        let mut alt = Vec::new();
        for i in 0..3 {
            alt.extend_from_slice(&r[i * CHUNK..(i + 1) * CHUNK]);
            alt.extend_from_slice(&t[i * CHUNK..(i + 1) * CHUNK]);
        }
        cases.push(("alternating".into(), alt));
        let mut halves = Vec::new();
        for i in 0..6 {
            let h = CHUNK / 2 + 17;
            halves.extend_from_slice(&t[i * h..(i + 1) * h]);
            halves.extend_from_slice(&r[i * h..(i + 1) * h]);
        }
        cases.push(("halves".into(), halves));
        // Text, then a stored random chunk, then text that repeats both: references across the
        // stored chunk (into the dictionary) must be right.
        let mut across = t[..CHUNK].to_vec();
        across.extend_from_slice(&r[..CHUNK]);
        let tail = &r[CHUNK - WINDOW + 100..CHUNK];
        across.extend_from_slice(tail);
        across.extend_from_slice(&t[CHUNK - 5000..CHUNK]);
        across.extend_from_slice(&t[..CHUNK]);
        across.extend_from_slice(tail);
        cases.push(("text after random".into(), across));
        for (name, data) in &cases {
            let gz = gzip(data);
            check_round_trip(name, data, &gz);
        }
    }

    #[test]
    fn the_chunk_after_a_stored_one_references_it() {
        // Chunk 2 repeats chunk 1's last 30,000 bytes: with the dictionary its first copy is a
        // few matches, not 30,000 literals.
        let r = random(CHUNK, 4);
        let mut data = r.clone();
        while data.len() < 2 * CHUNK {
            data.extend_from_slice(&r[CHUNK - 30_000..]);
        }
        let gz = gzip(&data);
        let mut unrelated = random(CHUNK, 5);
        unrelated.extend_from_slice(&data[CHUNK..]);
        let without = gzip(&unrelated).len();
        assert!(gz.len() + 10_000 < without, "{} vs {without}", gz.len());
        check_round_trip("dictionary", &data, &gz);
    }

    #[test]
    fn output_depends_on_the_input_only() {
        let mut data = text(CHUNK + 5000);
        data.extend_from_slice(&random(CHUNK + 333, 5));
        data.extend_from_slice(&text(70_000));
        let whole = gzip(&data);
        assert_eq!(whole, gzip(&data), "two runs");
        for size in [7, 4096, CHUNK - 1, CHUNK + 1, 3 * CHUNK] {
            assert!(gzip_in(&data, size) == whole, "writes of {size} bytes");
        }
        let small = text(3000);
        assert_eq!(gzip_in(&small, 1), gzip(&small), "writes of 1 byte");
        check_round_trip("determinism", &data, &whole);
    }
}
