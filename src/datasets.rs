//! Image data for the examples: the UCI handwritten digits that `smartcore`
//! embeds, and MNIST read from IDX files the user provides (nothing is ever
//! downloaded).

use std::fmt;
use std::path::{Path, PathBuf};

use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

/// Images as rows of `dim` values in `[0, 1]`, with their labels (empty when
/// the source has none loaded).
#[derive(Debug, Clone, PartialEq)]
pub struct Images {
    /// Values per image.
    pub dim: usize,
    /// Row-major `[len, dim]`.
    pub pixels: Vec<f32>,
    /// One label per image, or empty.
    pub labels: Vec<u8>,
}

impl Images {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.pixels.len() / self.dim
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    /// The values of image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        &self.pixels[i * self.dim..(i + 1) * self.dim]
    }

    /// The images at `indices`, row-major.
    pub fn gather(&self, indices: &[usize]) -> Vec<f32> {
        indices
            .iter()
            .flat_map(|&i| self.image(i).iter().copied())
            .collect()
    }
}

/// The UCI digits (1797 8x8 images, values `0..=16` scaled to `[0, 1]`),
/// shuffled with a fixed seed and split 80/20 into train and test.
pub fn uci_digits() -> (Images, Images) {
    let set = smartcore::dataset::digits::load_dataset();
    assert_eq!((set.num_samples, set.num_features), (1797, 64));
    let mut order: Vec<usize> = (0..set.num_samples).collect();
    order.shuffle(&mut StdRng::seed_from_u64(8));
    let cut = set.num_samples * 4 / 5;
    let take = |rows: &[usize]| Images {
        dim: 64,
        pixels: rows
            .iter()
            .flat_map(|&i| set.data[i * 64..(i + 1) * 64].iter().map(|v| v / 16.0))
            .collect(),
        labels: rows.iter().map(|&i| set.target[i] as u8).collect(),
    };
    (take(&order[..cut]), take(&order[cut..]))
}

/// An array read from an IDX file (the MNIST format): big-endian header,
/// unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions from the header, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

/// Why an IDX file could not be read.
#[derive(Debug)]
pub enum IdxError {
    /// The file could not be opened or read.
    Io(PathBuf, std::io::Error),
    /// The bytes are not an unsigned-byte IDX array.
    Format(PathBuf, String),
}

impl fmt::Display for IdxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdxError::Io(path, e) => write!(f, "{}: {e}", path.display()),
            IdxError::Format(path, why) => {
                write!(f, "{}: not an IDX file of unsigned bytes: {why}", path.display())
            }
        }
    }
}

impl std::error::Error for IdxError {}

/// Reads an IDX file of unsigned bytes (type code `0x08`), checking that the
/// header's dimensions match the file's length exactly.
pub fn read_idx(path: &Path) -> Result<IdxArray, IdxError> {
    let bytes = std::fs::read(path).map_err(|e| IdxError::Io(path.to_path_buf(), e))?;
    let bad = |why: String| IdxError::Format(path.to_path_buf(), why);
    if bytes.len() < 4 {
        return Err(bad(format!(
            "{} bytes, shorter than the 4-byte magic number",
            bytes.len()
        )));
    }
    if bytes[..2] == [0x1f, 0x8b] {
        return Err(bad("gzip-compressed: decompress it first (gunzip)".into()));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(format!(
            "magic number starts {:#04x} {:#04x}, expected 0x00 0x00",
            bytes[0], bytes[1]
        )));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "element type {:#04x}, only unsigned bytes (0x08) are supported",
            bytes[2]
        )));
    }
    let rank = bytes[3] as usize;
    let header = 4 + 4 * rank;
    if rank == 0 || bytes.len() < header {
        return Err(bad(format!("rank {rank} with a {}-byte file", bytes.len())));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match count {
        Some(count) if bytes.len() - header == count => Ok(IdxArray {
            dims,
            data: bytes[header..].to_vec(),
        }),
        _ => Err(bad(format!(
            "header says {dims:?} but {} bytes of data follow",
            bytes.len() - header
        ))),
    }
}

/// Reads IDX images (`[count, rows, cols]`, bytes scaled to `[0, 1]`) and,
/// when given, their labels (`[count]`).
pub fn idx_images(images: &Path, labels: Option<&Path>) -> Result<Images, IdxError> {
    let array = read_idx(images)?;
    if array.dims.len() != 3 {
        return Err(IdxError::Format(
            images.to_path_buf(),
            format!("expected [count, rows, cols], got dims {:?}", array.dims),
        ));
    }
    let labels = match labels {
        Some(path) => {
            let l = read_idx(path)?;
            if l.dims != [array.dims[0]] {
                return Err(IdxError::Format(
                    path.to_path_buf(),
                    format!("expected [{}] labels, got dims {:?}", array.dims[0], l.dims),
                ));
            }
            l.data
        }
        None => Vec::new(),
    };
    Ok(Images {
        dim: array.dims[1] * array.dims[2],
        pixels: array.data.iter().map(|&b| b as f32 / 255.0).collect(),
        labels,
    })
}

/// MNIST's train and test images from `dir`, under their usual names
/// (`train-images-idx3-ubyte`, `t10k-images-idx3-ubyte`, or with `.idx3-ubyte`).
pub fn mnist(dir: &Path) -> Result<(Images, Images), IdxError> {
    let find = |stem: &str| {
        let candidates = [format!("{stem}-idx3-ubyte"), format!("{stem}.idx3-ubyte")];
        candidates
            .iter()
            .map(|name| dir.join(name))
            .find(|p| p.exists())
            .ok_or_else(|| {
                IdxError::Io(
                    dir.join(&candidates[0]),
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!(
                            "neither {} nor {} in this folder (uncompressed)",
                            candidates[0], candidates[1]
                        ),
                    ),
                )
            })
    };
    Ok((
        idx_images(&find("train-images")?, None)?,
        idx_images(&find("t10k-images")?, None)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kradagrad-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn reads_images_and_labels() {
        let pixels: Vec<u8> = (0..18).map(|v| (v * 15) as u8).collect();
        let images = scratch("imgs", &idx(&[2, 3, 3], &pixels));
        let labels = scratch("labels", &idx(&[2], &[7, 1]));
        let read = idx_images(&images, Some(&labels)).unwrap();
        assert_eq!((read.len(), read.dim), (2, 9));
        assert_eq!(read.labels, vec![7, 1]);
        assert_eq!(read.image(1)[0], 135.0 / 255.0);
        assert_eq!(read.image(1)[8], 255.0 / 255.0);
        assert_eq!(read.gather(&[1, 0])[..9], read.pixels[9..]);
    }

    #[test]
    fn finds_mnist_names() {
        let dir = std::env::temp_dir().join(format!("kradagrad-mnist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("train-images-idx3-ubyte"), idx(&[3, 2, 2], &[0; 12])).unwrap();
        let missing = mnist(&dir).unwrap_err().to_string();
        assert!(missing.contains("t10k-images-idx3-ubyte"), "{missing}");
        std::fs::write(dir.join("t10k-images.idx3-ubyte"), idx(&[1, 2, 2], &[255; 4])).unwrap();
        let (train, test) = mnist(&dir).unwrap();
        assert_eq!((train.len(), test.len(), test.dim), (3, 1, 4));
        assert_eq!(test.pixels, vec![1.0; 4]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_bad_files_with_the_reason() {
        let cases: [(&str, Vec<u8>, &str); 6] = [
            ("short", vec![0, 0], "shorter than"),
            ("gzip", vec![0x1f, 0x8b, 8, 0, 0], "gunzip"),
            ("magic", vec![1, 0, 8, 1, 0, 0, 0, 0], "magic"),
            ("float", vec![0, 0, 0x0d, 1, 0, 0, 0, 0], "element type"),
            ("truncated", idx(&[2, 3, 3], &[0; 17]), "17 bytes"),
            ("long", idx(&[2], &[0; 3]), "3 bytes"),
        ];
        for (name, bytes, expected) in cases {
            let error = read_idx(&scratch(name, &bytes)).unwrap_err().to_string();
            assert!(error.contains(expected), "{name}: {error}");
        }
        let labels_as_images = idx_images(&scratch("labels1d", &idx(&[2], &[1, 2])), None).unwrap_err();
        assert!(labels_as_images.to_string().contains("[count, rows, cols]"));
        let io = read_idx(Path::new("/nonexistent/kradagrad/idx")).unwrap_err();
        assert!(matches!(io, IdxError::Io(..)));
    }
}
