//! Minimal, strict `.npy` (format versions 1, 2 and 3) reading and writing.
//!
//! Reads little-endian, C-order float16/float32/float64 arrays (the dtypes noise and latents
//! come in) and rejects everything else with an error naming the file: Fortran order,
//! big-endian data, other dtypes, truncated or over-long data, a malformed header.
//! Writes float32 and float16 arrays (version 1 header) to any `Write`; atomic file
//! replacement is the caller's job.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Element type of a `.npy` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    /// `<f2`
    F16,
    /// `<f4`
    F32,
    /// `<f8`
    F64,
}

impl NpyDtype {
    /// numpy `descr` string.
    pub fn descr(self) -> &'static str {
        match self {
            NpyDtype::F16 => "<f2",
            NpyDtype::F32 => "<f4",
            NpyDtype::F64 => "<f8",
        }
    }

    fn size(self) -> usize {
        match self {
            NpyDtype::F16 => 2,
            NpyDtype::F32 => 4,
            NpyDtype::F64 => 8,
        }
    }
}

/// A `.npy` array as read: shape, values as f32 (C order) and the dtype the file held.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Dimensions, outermost first (empty for a 0-d array).
    pub shape: Vec<usize>,
    /// The file's element type.
    pub dtype: NpyDtype,
    /// Values converted to f32 (exact for f16/f32; rounded to nearest for f64).
    pub data: Vec<f32>,
    /// The original values when the file held float64, so callers can round them once to a
    /// narrower type (f64 → f16 directly) instead of twice through `data`.
    pub data_f64: Option<Vec<f64>>,
}

/// Errors reading a `.npy` file; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// The file could not be read.
    #[error("{path}: cannot read .npy file: {source}")]
    Io {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not an array we accept.
    #[error("{path}: {reason}")]
    Format {
        /// File path (or a label for in-memory data).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Reads a `.npy` file strictly (see the module docs for what is accepted).
pub fn read_npy(path: &Path) -> Result<NpyArray, NpyError> {
    let bytes = fs::read(path).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_npy(&bytes, path)
}

/// Parses `.npy` bytes; `path` only labels errors.
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<NpyArray, NpyError> {
    let err = |reason: String| NpyError::Format {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < 8 || &bytes[..6] != MAGIC {
        return Err(err(
            "not a .npy file (bad magic; expected \\x93NUMPY)".to_string()
        ));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, header_start) = match major {
        1 => {
            let b = bytes
                .get(8..10)
                .ok_or_else(|| err("truncated header".to_string()))?;
            (u16::from_le_bytes([b[0], b[1]]) as usize, 10usize)
        }
        2 | 3 => {
            let b = bytes
                .get(8..12)
                .ok_or_else(|| err("truncated header".to_string()))?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        _ => {
            return Err(err(format!(
                "unsupported .npy format version {major}.{minor}"
            )))
        }
    };
    let header_end = header_start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| err("truncated header".to_string()))?;
    // v1/v2 headers are latin-1 in principle but numpy writes ASCII; v3 is UTF-8.
    let header = std::str::from_utf8(&bytes[header_start..header_end])
        .map_err(|_| err("header is not valid text".to_string()))?;
    let h = parse_header(header)
        .map_err(|e| err(format!("malformed header {:?}: {e}", header.trim_end())))?;

    if h.fortran_order {
        return Err(err(
            "fortran_order is True; only C-order arrays are supported".to_string(),
        ));
    }
    let dtype = match h.descr.as_str() {
        "<f2" => NpyDtype::F16,
        "<f4" => NpyDtype::F32,
        "<f8" => NpyDtype::F64,
        ">f2" | ">f4" | ">f8" => {
            return Err(err(format!("big-endian dtype {:?} is not supported (save as little-endian)", h.descr)))
        }
        other => {
            return Err(err(format!("dtype {other:?} is not supported (expected float16, float32 or float64, little-endian)")))
        }
    };
    let count = h
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err(format!("shape {:?} is too large", h.shape)))?;
    let want = count
        .checked_mul(dtype.size())
        .ok_or_else(|| err(format!("shape {:?} is too large", h.shape)))?;
    let body = &bytes[header_end..];
    if body.len() < want {
        return Err(err(format!(
            "truncated data: shape {:?} of {} needs {want} bytes, file has {}",
            h.shape,
            h.descr,
            body.len()
        )));
    }
    if body.len() > want {
        return Err(err(format!(
            "{} bytes of trailing data after the array (shape {:?} of {} needs {want})",
            body.len() - want,
            h.shape,
            h.descr
        )));
    }
    let (data, data_f64) = match dtype {
        NpyDtype::F16 => {
            let v = body
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect();
            (v, None)
        }
        NpyDtype::F32 => {
            let v = body
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (v, None)
        }
        NpyDtype::F64 => {
            let v: Vec<f64> = body
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            (v.iter().map(|&x| x as f32).collect(), Some(v))
        }
    };
    Ok(NpyArray {
        shape: h.shape,
        dtype,
        data,
        data_f64,
    })
}

struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses the Python dict literal numpy writes, e.g.
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4, 64, 64), }`.
fn parse_header(s: &str) -> Result<Header, String> {
    let mut p = Parser {
        s: s.trim_end_matches(['\n', ' ', '\0']).as_bytes(),
        i: 0,
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    p.expect(b'{')?;
    loop {
        p.ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.ws();
        p.expect(b':')?;
        p.ws();
        match key.as_str() {
            "descr" => descr = Some(p.string()?),
            "fortran_order" => fortran = Some(p.boolean()?),
            "shape" => shape = Some(p.tuple()?),
            other => return Err(format!("unexpected key {other:?}")),
        }
        p.ws();
        if !p.eat(b',') {
            p.ws();
            p.expect(b'}')?;
            break;
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return Err("text after the dict".to_string());
    }
    Ok(Header {
        descr: descr.ok_or("missing 'descr'")?,
        fortran_order: fortran.ok_or("missing 'fortran_order'")?,
        shape: shape.ok_or("missing 'shape'")?,
    })
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at offset {}", c as char, self.i))
        }
    }
    fn string(&mut self) -> Result<String, String> {
        let q = match self.s.get(self.i) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a string at offset {}", self.i)),
        };
        self.i += 1;
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i] != q {
            self.i += 1;
        }
        if self.i >= self.s.len() {
            return Err("unterminated string".to_string());
        }
        let out = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        self.i += 1;
        Ok(out)
    }
    fn boolean(&mut self) -> Result<bool, String> {
        let rest = &self.s[self.i..];
        if rest.starts_with(b"True") {
            self.i += 4;
            Ok(true)
        } else if rest.starts_with(b"False") {
            self.i += 5;
            Ok(false)
        } else {
            Err(format!("expected True or False at offset {}", self.i))
        }
    }
    fn tuple(&mut self) -> Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            self.ws();
            if self.eat(b')') {
                return Ok(dims);
            }
            let start = self.i;
            while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                self.i += 1;
            }
            // Python 2 era files may write `64L`.
            let digits = std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
            let d: usize = digits
                .parse()
                .map_err(|_| format!("expected a dimension at offset {start}"))?;
            self.eat(b'L');
            dims.push(d);
            self.ws();
            if !self.eat(b',') {
                self.ws();
                self.expect(b')')?;
                return Ok(dims);
            }
        }
    }
}

/// Writes a version 1 `.npy` header for `descr` and `shape`, padded to 64 bytes as numpy does.
fn write_header(w: &mut impl Write, descr: &str, shape: &[usize]) -> std::io::Result<()> {
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // magic(6) + version(2) + len(2) + dict + '\n' must be a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    let len = u16::try_from(dict.len()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "npy header too long")
    })?;
    w.write_all(MAGIC)?;
    w.write_all(&[1, 0])?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(dict.as_bytes())
}

fn check_len(shape: &[usize], n: usize) -> std::io::Result<()> {
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if count != Some(n) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("npy: shape {shape:?} does not hold {n} values"),
        ));
    }
    Ok(())
}

/// Writes `data` (C order) as a little-endian float32 `.npy` of `shape`.
pub fn write_npy_f32(mut w: impl Write, shape: &[usize], data: &[f32]) -> std::io::Result<()> {
    check_len(shape, data.len())?;
    write_header(&mut w, NpyDtype::F32.descr(), shape)?;
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    w.write_all(&bytes)?;
    w.flush()
}

/// Writes `data` (C order) as a little-endian float16 `.npy` of `shape`. Values are rounded to
/// the nearest f16 (exact for values already produced as f16, e.g. `NoiseDtype::F16` noise).
pub fn write_npy_f16(mut w: impl Write, shape: &[usize], data: &[f32]) -> std::io::Result<()> {
    check_len(shape, data.len())?;
    write_header(&mut w, NpyDtype::F16.descr(), shape)?;
    let bytes: Vec<u8> = data
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
        .collect();
    w.write_all(&bytes)?;
    w.flush()
}
