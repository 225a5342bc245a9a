//! What a UNet's ONNX graph says about the sizes it can run, read from the file without ONNX
//! Runtime: how many times it halves the latents, and whether it doubles them back by a fixed
//! factor (an export traced at a size divisible by every halving) or to the size of the skip
//! connection (an export traced at an odd size, which runs any size).
//!
//! With fixed up-sampling, a latent side that some halving leaves odd comes back one short and
//! ONNX Runtime fails deep inside the graph ("Non concat axis dimensions must match"). Knowing
//! this beforehand turns that into a one-line error naming the size.
//!
//! The reader walks the protobuf wire format directly (ModelProto → GraphProto → NodeProto) and
//! seeks over everything else, so a UNet with gigabytes of inline weights costs a few reads. It
//! reads untrusted bytes: every length is checked against what is left, nesting is bounded, and
//! any malformation is an error, never a panic or a huge allocation.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How a UNet changes the spatial size of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnetGeometry {
    /// Convolutions with stride 2 (SD1.5: 3).
    pub downsamplers: u32,
    /// The up-sampling uses constant scales (`Upsample`, or `Resize` without a `sizes` input).
    pub fixed_upsampling: bool,
}

impl UnetGeometry {
    /// What every latent side must be a multiple of (1 when any size works).
    pub fn latent_multiple(&self) -> u64 {
        if self.fixed_upsampling {
            1u64 << self.downsamplers.min(16)
        } else {
            1
        }
    }

    /// Checks an image size against this UNet (sizes are multiples of 8 already), e.g. "height
    /// 72 gives latent height 9, which this UNet's 2 down-sampling steps cannot halve twice".
    pub fn check_size(&self, width: u32, height: u32) -> Result<(), String> {
        let m = self.latent_multiple();
        for (what, pixels) in [("width", width), ("height", height)] {
            let latent = u64::from(pixels) / 8;
            if latent % m == 0 {
                continue;
            }
            let steps = self.downsamplers;
            let times = match steps {
                1 => String::new(),
                2 => " twice".to_string(),
                n => format!(" {n} times"),
            };
            return Err(format!(
                "{what} {pixels} gives latent {what} {latent}, which this UNet's {steps} down-sampling step{} cannot halve{times} (its up-sampling uses fixed scales, so the sizes would not match again); use a {what} that is a multiple of {}",
                if steps == 1 { "" } else { "s" },
                m * 8
            ));
        }
        Ok(())
    }
}

/// Reads the geometry of the UNet at `path`; the error names the file.
pub fn scan_unet(path: &Path) -> Result<UnetGeometry, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    let mut r = Wire::new(std::io::BufReader::new(file), len);
    scan_model(&mut r).map_err(|e| format!("{}: not a readable ONNX model: {e}", path.display()))
}

/// [`scan_unet`] on bytes in memory (the fuzz target's entry point).
pub fn scan_unet_bytes(bytes: &[u8]) -> Result<UnetGeometry, String> {
    let mut r = Wire::new(std::io::Cursor::new(bytes), bytes.len() as u64);
    scan_model(&mut r)
}

// Field numbers of onnx.proto3 that matter here.
const MODEL_GRAPH: u64 = 7;
const GRAPH_NODE: u64 = 1;
const NODE_INPUT: u64 = 1;
const NODE_OP_TYPE: u64 = 4;
const NODE_ATTRIBUTE: u64 = 5;
const ATTR_NAME: u64 = 1;
const ATTR_INTS: u64 = 8;

/// Names and strings longer than this are not what a UNet's graph holds.
const MAX_STRING: u64 = 64 * 1024;
/// An attribute's ints (strides) are a handful; more is skipped, not stored.
const MAX_INTS: usize = 16;

fn scan_model<R: Read + Seek>(r: &mut Wire<R>) -> Result<UnetGeometry, String> {
    let mut geometry = UnetGeometry {
        downsamplers: 0,
        fixed_upsampling: false,
    };
    let mut graphs = 0;
    while let Some((field, wire)) = r.key(r.len)? {
        if field == MODEL_GRAPH && wire == 2 {
            let end = r.sub_end()?;
            scan_graph(r, end, &mut geometry)?;
            graphs += 1;
        } else {
            r.skip(wire, r.len)?;
        }
    }
    if graphs == 0 {
        return Err("no graph".into());
    }
    Ok(geometry)
}

fn scan_graph<R: Read + Seek>(
    r: &mut Wire<R>,
    end: u64,
    g: &mut UnetGeometry,
) -> Result<(), String> {
    while let Some((field, wire)) = r.key(end)? {
        if field == GRAPH_NODE && wire == 2 {
            let node_end = r.sub_end_within(end)?;
            scan_node(r, node_end, g)?;
        } else {
            r.skip(wire, end)?;
        }
    }
    Ok(())
}

fn scan_node<R: Read + Seek>(
    r: &mut Wire<R>,
    end: u64,
    g: &mut UnetGeometry,
) -> Result<(), String> {
    let mut op = String::new();
    let mut inputs: Vec<String> = Vec::new();
    let mut strides: Option<Vec<i64>> = None;
    while let Some((field, wire)) = r.key(end)? {
        match (field, wire) {
            (NODE_OP_TYPE, 2) => op = r.string(end)?,
            // Only Resize's inputs matter, and only how many are named: keep at most 8.
            (NODE_INPUT, 2) if inputs.len() < 8 => inputs.push(r.string(end)?),
            (NODE_ATTRIBUTE, 2) => {
                let attr_end = r.sub_end_within(end)?;
                if let Some(s) = scan_strides(r, attr_end)? {
                    strides = Some(s);
                }
            }
            _ => r.skip(wire, end)?,
        }
    }
    match op.as_str() {
        "Conv" if strides.as_ref().is_some_and(|s| s.contains(&2)) => {
            g.downsamplers = g.downsamplers.saturating_add(1)
        }
        // Resize(X, roi, scales, sizes): with `sizes` the output follows a runtime shape;
        // without it, constant scales. Upsample (opset < 10) always has constant scales.
        "Resize" if inputs.get(3).is_none_or(|s| s.is_empty()) => g.fixed_upsampling = true,
        "Upsample" => g.fixed_upsampling = true,
        _ => {}
    }
    Ok(())
}

/// The ints of an attribute named `strides`, `None` for any other attribute.
fn scan_strides<R: Read + Seek>(r: &mut Wire<R>, end: u64) -> Result<Option<Vec<i64>>, String> {
    let mut name = String::new();
    let mut ints = Vec::new();
    while let Some((field, wire)) = r.key(end)? {
        match (field, wire) {
            (ATTR_NAME, 2) => name = r.string(end)?,
            (ATTR_INTS, 0) => {
                let v = r.varint()? as i64;
                if ints.len() < MAX_INTS {
                    ints.push(v);
                }
            }
            (ATTR_INTS, 2) => {
                let packed_end = r.sub_end_within(end)?;
                while r.pos < packed_end {
                    let v = r.varint()? as i64;
                    if ints.len() < MAX_INTS {
                        ints.push(v);
                    }
                }
                if r.pos != packed_end {
                    return Err("packed ints overrun their field".into());
                }
            }
            _ => r.skip(wire, end)?,
        }
    }
    Ok((name == "strides").then_some(ints))
}

/// A protobuf wire-format reader that tracks its position and seeks over skipped fields.
struct Wire<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read + Seek> Wire<R> {
    fn new(inner: R, len: u64) -> Self {
        Wire { inner, pos: 0, len }
    }

    fn byte(&mut self) -> Result<u8, String> {
        let mut b = [0u8; 1];
        self.inner
            .read_exact(&mut b)
            .map_err(|e| format!("at byte {}: {e}", self.pos))?;
        self.pos += 1;
        Ok(b[0])
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!(
            "varint longer than 10 bytes before byte {}",
            self.pos
        ))
    }

    /// The next field key, or `None` at `end`.
    fn key(&mut self, end: u64) -> Result<Option<(u64, u8)>, String> {
        if self.pos >= end {
            return Ok(None);
        }
        let k = self.varint()?;
        if self.pos > end {
            return Err("field key overruns its message".into());
        }
        Ok(Some((k >> 3, (k & 7) as u8)))
    }

    /// Reads a length prefix and returns where that sub-message ends (within the file).
    fn sub_end(&mut self) -> Result<u64, String> {
        let len = self.len;
        self.sub_end_within(len)
    }

    fn sub_end_within(&mut self, end: u64) -> Result<u64, String> {
        let n = self.varint()?;
        self.pos
            .checked_add(n)
            .filter(|&e| e <= end)
            .ok_or_else(|| {
                format!(
                    "a field of {n} bytes at byte {} overruns its message",
                    self.pos
                )
            })
    }

    fn string(&mut self, end: u64) -> Result<String, String> {
        let field_end = self.sub_end_within(end)?;
        let n = field_end - self.pos;
        if n > MAX_STRING {
            self.seek_to(field_end)?;
            return Ok(String::new());
        }
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| format!("at byte {}: {e}", self.pos))?;
        self.pos = field_end;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn seek_to(&mut self, to: u64) -> Result<(), String> {
        let delta = i64::try_from(to - self.pos).map_err(|_| "field too long".to_string())?;
        self.inner
            .seek(SeekFrom::Current(delta))
            .map_err(|e| format!("at byte {}: {e}", self.pos))?;
        self.pos = to;
        Ok(())
    }

    /// Skips one field's value of wire type `wire`, staying within `end`.
    fn skip(&mut self, wire: u8, end: u64) -> Result<(), String> {
        let to = match wire {
            0 => {
                self.varint()?;
                return if self.pos <= end {
                    Ok(())
                } else {
                    Err("varint overruns its message".into())
                };
            }
            1 => self.pos + 8,
            2 => self.sub_end_within(end)?,
            5 => self.pos + 4,
            other => {
                return Err(format!(
                    "unsupported wire type {other} at byte {}",
                    self.pos
                ))
            }
        };
        if to > end {
            return Err(format!("a field at byte {} overruns its message", self.pos));
        }
        self.seek_to(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field(num: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(num << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn node(op: &str, inputs: &[&str], strides: Option<&[u64]>) -> Vec<u8> {
        let mut n = Vec::new();
        for i in inputs {
            field(NODE_INPUT, i.as_bytes(), &mut n);
        }
        field(NODE_OP_TYPE, op.as_bytes(), &mut n);
        if let Some(s) = strides {
            let mut a = Vec::new();
            field(ATTR_NAME, b"strides", &mut a);
            let mut packed = Vec::new();
            for &x in s {
                varint(x, &mut packed);
            }
            field(ATTR_INTS, &packed, &mut a);
            field(NODE_ATTRIBUTE, &a, &mut n);
        }
        n
    }

    fn model(nodes: &[Vec<u8>]) -> Vec<u8> {
        let mut g = Vec::new();
        // A big initializer-like field the scanner must skip.
        field(5, &[7u8; 300], &mut g);
        for n in nodes {
            field(GRAPH_NODE, n, &mut g);
        }
        let mut m = Vec::new();
        varint(1 << 3, &mut m); // ir_version = 8
        varint(8, &mut m);
        field(MODEL_GRAPH, &g, &mut m);
        m
    }

    #[test]
    fn counts_downsamplers_and_tells_fixed_from_dynamic_upsampling() {
        let conv2 = node("Conv", &["x", "w"], Some(&[2, 2]));
        let conv1 = node("Conv", &["x", "w"], Some(&[1, 1]));
        let fixed = node("Resize", &["x", "", "scales"], None);
        let dynamic = node("Resize", &["x", "", "", "sizes"], None);
        let g = scan_unet_bytes(&model(&[
            conv2.clone(),
            conv1.clone(),
            conv2.clone(),
            fixed,
        ]))
        .unwrap();
        assert_eq!(
            g,
            UnetGeometry {
                downsamplers: 2,
                fixed_upsampling: true
            }
        );
        assert_eq!(g.latent_multiple(), 4);
        let e = g.check_size(96, 72).unwrap_err();
        assert!(e.contains("height 72 gives latent height 9"), "{e}");
        assert!(
            e.contains("2 down-sampling steps cannot halve twice"),
            "{e}"
        );
        assert!(e.contains("multiple of 32"), "{e}");
        g.check_size(64, 96).unwrap();
        let g = scan_unet_bytes(&model(&[conv2, conv1, dynamic])).unwrap();
        assert!(!g.fixed_upsampling);
        g.check_size(96, 72).unwrap();
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert!(scan_unet_bytes(b"").is_err());
        let mut m = model(&[node("Conv", &[], Some(&[2, 2]))]);
        m.truncate(m.len() - 3);
        assert!(scan_unet_bytes(&m).is_err());
        // A length that claims more bytes than the file has.
        let mut bad = Vec::new();
        varint(MODEL_GRAPH << 3 | 2, &mut bad);
        varint(u64::MAX / 2, &mut bad);
        assert!(scan_unet_bytes(&bad).is_err());
        assert!(scan_unet_bytes(&[0xff; 12]).is_err());
    }

    #[test]
    fn the_tiny_export_runs_any_size() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx/tiny-sd15/unet/model.onnx");
        let g = scan_unet(&p).unwrap();
        assert_eq!(g.downsamplers, 1);
        assert!(!g.fixed_upsampling);
    }
}
