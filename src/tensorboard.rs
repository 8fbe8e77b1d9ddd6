//! TensorBoard event files: scalar summaries in the TFRecord framing TensorBoard reads
//! (`events.out.tfevents.*`), written without a protobuf dependency — an `Event` with a scalar is
//! five fields, encoded here by hand — and read back by [`read_scalars`] (CRCs checked).
//!
//! Framing: `u64 length`, `u32 masked_crc32c(length)`, `data`, `u32 masked_crc32c(data)`, all
//! little-endian; the mask is `rotr(crc, 15) + 0xa282ead8`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// CRC-32C (Castagnoli), bitwise.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

fn masked(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(field: u32, data: &[u8], out: &mut Vec<u8>) {
    varint(((field << 3) | 2) as u64, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// An `Event` proto: wall time, step, and either the file version or scalar values.
fn event(wall_time: f64, step: i64, file_version: Option<&str>, scalars: &[(&str, f32)]) -> Vec<u8> {
    let mut e = Vec::new();
    e.push(0x09); // wall_time: field 1, 64-bit
    e.extend_from_slice(&wall_time.to_le_bytes());
    e.push(0x10); // step: field 2, varint
    varint(step as u64, &mut e);
    if let Some(v) = file_version {
        bytes_field(3, v.as_bytes(), &mut e);
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut v = Vec::new();
            bytes_field(1, tag.as_bytes(), &mut v);
            v.push(0x15); // simple_value: field 2, 32-bit
            v.extend_from_slice(&value.to_le_bytes());
            bytes_field(1, &v, &mut summary);
        }
        bytes_field(5, &summary, &mut e);
    }
    e
}

fn record(data: &[u8], out: &mut Vec<u8>) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked(crc32c(&len)).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked(crc32c(data)).to_le_bytes());
}

/// Appends scalar events to one event file.
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.{secs}.sluice.{pid}` with its version record.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let now = now_s();
        let path = dir.join(format!("events.out.tfevents.{}.sluice.{}", now as u64, std::process::id()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let mut w = EventWriter { file, path };
        let mut buf = Vec::new();
        record(&event(now, 0, Some("brain.Event:2"), &[]), &mut buf);
        w.write_raw(&buf)?;
        Ok(w)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `scalars` at `step`.
    pub fn scalars(&mut self, step: u64, scalars: &[(&str, f32)]) -> Result<()> {
        if scalars.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        record(&event(now_s(), step as i64, None, scalars), &mut buf);
        self.write_raw(&buf)
    }

    fn write_raw(&mut self, buf: &[u8]) -> Result<()> {
        self.file.write_all(buf).with_context(|| format!("writing {}", self.path.display()))
    }
}

fn now_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// One scalar read back: step, tag, value.
pub type Scalar = (i64, String, f32);

/// Reads every scalar of an event file, checking both CRCs of every record.
pub fn read_scalars(path: &Path) -> Result<Vec<Scalar>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    let mut at = 0usize;
    let bad = |what: &str, at: usize| anyhow::anyhow!("{}: {what} at byte {at}", path.display());
    while at < data.len() {
        let head = data.get(at..at + 12).ok_or_else(|| bad("truncated record header", at))?;
        let len_bytes: [u8; 8] = head[..8].try_into().map_err(|_| bad("header", at))?;
        let crc = u32::from_le_bytes(head[8..12].try_into().map_err(|_| bad("header", at))?);
        if crc != masked(crc32c(&len_bytes)) {
            bail!(bad("length CRC mismatch", at));
        }
        let len = u64::from_le_bytes(len_bytes) as usize;
        let body = data.get(at + 12..at + 12 + len).ok_or_else(|| bad("truncated record", at))?;
        let crc_at = at + 12 + len;
        let crc = data.get(crc_at..crc_at + 4).ok_or_else(|| bad("truncated CRC", crc_at))?;
        if u32::from_le_bytes(crc.try_into().map_err(|_| bad("crc", crc_at))?) != masked(crc32c(body)) {
            bail!(bad("data CRC mismatch", at));
        }
        decode_event(body, &mut out).ok_or_else(|| bad("undecodable event", at))?;
        at = crc_at + 4;
    }
    Ok(out)
}

/// Field number, wire type and payload of each field of a message.
fn fields(mut b: &[u8]) -> Option<Vec<(u32, &[u8], u64)>> {
    fn read_varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = read_varint(&mut b)?;
        let (field, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => out.push((field, &b[..0], read_varint(&mut b)?)),
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                out.push((field, b.get(..n)?, 0));
                b = &b[n..];
            }
            2 => {
                let n = read_varint(&mut b)? as usize;
                out.push((field, b.get(..n)?, 0));
                b = &b[n..];
            }
            _ => return None,
        }
    }
    Some(out)
}

fn decode_event(body: &[u8], out: &mut Vec<Scalar>) -> Option<()> {
    let f = fields(body)?;
    let step = f.iter().find(|(n, _, _)| *n == 2).map(|(_, _, v)| *v as i64).unwrap_or(0);
    for (_, summary, _) in f.iter().filter(|(n, _, _)| *n == 5) {
        for (_, value, _) in fields(summary)?.iter().filter(|(n, _, _)| *n == 1) {
            let vf = fields(value)?;
            let tag = vf.iter().find(|(n, _, _)| *n == 1).map(|(_, t, _)| String::from_utf8_lossy(t))?;
            let v = vf.iter().find(|(n, _, _)| *n == 2)?.1;
            out.push((step, tag.into_owned(), f32::from_le_bytes(v.try_into().ok()?)));
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_reference_check_value() {
        // The standard check value of CRC-32C ("123456789"), and RFC 3720's 32 zero bytes.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
    }

    #[test]
    fn scalars_round_trip_through_an_event_file() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut w = EventWriter::create(dir.path())?;
        w.scalars(1, &[("reward/mean", 0.25), ("loss/total", -1.5)])?;
        w.scalars(2, &[("reward/mean", 0.5)])?;
        let back = read_scalars(w.path())?;
        assert_eq!(
            back,
            vec![
                (1, "reward/mean".into(), 0.25),
                (1, "loss/total".into(), -1.5),
                (2, "reward/mean".into(), 0.5)
            ]
        );
        // A flipped byte is caught by the CRC.
        let mut bytes = std::fs::read(w.path())?;
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        std::fs::write(w.path(), bytes)?;
        assert!(read_scalars(w.path()).is_err());
        Ok(())
    }
}
