//! `guardian plugin new NAME`: a plugin crate that builds and passes its
//! tests as written, from the template in `sdk/template/` and the SDK source
//! this binary was built with.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::AuthoringError;
use super::embedded::{CARGO_LOCK, RUST_TOOLCHAIN, SDK_FILES, TEMPLATE_FILES};

/// What `plugin new` writes, and where.
#[derive(Debug, Clone)]
pub struct NewOptions {
    /// The crate's name (a-z, 0-9, `-`, `_`, starting with a letter).
    pub name: String,
    /// The folder in which `NAME/` is made.
    pub parent: PathBuf,
    /// An SDK copy to depend on instead of writing one into the crate.
    pub sdk: Option<PathBuf>,
}

/// A crate written by [`new_crate`].
#[derive(Debug)]
pub struct Created {
    /// The crate's folder.
    pub dir: PathBuf,
    /// The crate's name.
    pub name: String,
    /// The SDK it depends on (inside `dir` unless `--sdk` was given).
    pub sdk: PathBuf,
}

impl Created {
    /// What was written and the next steps, for people.
    pub fn render(&self) -> String {
        let wasm = format!(
            "target/wasm32-wasip2/release/{}.wasm",
            self.name.replace('-', "_")
        );
        let mut out = String::new();
        let _ = writeln!(out, "created the plugin crate {}", self.dir.display());
        let _ = writeln!(out, "  SDK: {}", self.sdk.display());
        let _ = writeln!(out, "next steps, in {}:", self.dir.display());
        let _ = writeln!(out, "  cargo test");
        let _ = writeln!(out, "  cargo build --release --target wasm32-wasip2");
        let _ = writeln!(
            out,
            "  guardian plugin check {wasm} --params '{{\"max\": 10}}' --measurements measurements.jsonl"
        );
        let _ = writeln!(out, "  guardian plugin upload {wasm}");
        out
    }
}

/// Writes the crate `options.name` into `options.parent`: the template with
/// its names replaced, `Cargo.lock`, `rust-toolchain.toml`, and the SDK
/// (unless `options.sdk` names one). Refuses a folder that exists.
pub fn new_crate(options: &NewOptions) -> Result<Created, AuthoringError> {
    let name = &options.name;
    check_name(name)?;
    let dir = options.parent.join(name);
    if dir.exists() {
        return Err(AuthoringError::AlreadyExists(format!(
            "{} exists; choose another name or remove it",
            dir.display()
        )));
    }
    let sdk = match &options.sdk {
        Some(path) => Some(sdk_copy(path)?),
        None => None,
    };
    let ident = name.replace('-', "_");
    let type_name: String = name
        .split(['-', '_'])
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect();
    let sdk_dependency = match &sdk {
        Some(path) => format!(
            "guardian-sdk = {{ path = {:?} }}",
            path.display().to_string()
        ),
        None => "guardian-sdk = { path = \"guardian-sdk\" }".to_owned(),
    };
    for (relative, bytes) in TEMPLATE_FILES {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| AuthoringError::Io(format!("template {relative}: {e}")))?
            .replace(
                "guardian-sdk = { path = \"guardian-sdk\" }",
                &sdk_dependency,
            )
            .replace("my-plugin", name)
            .replace("my_plugin", &ident)
            .replace("MyPlugin", &type_name);
        write(&dir.join(relative), text.as_bytes())?;
    }
    write(&dir.join("Cargo.lock"), CARGO_LOCK.as_bytes())?;
    write(&dir.join("rust-toolchain.toml"), RUST_TOOLCHAIN.as_bytes())?;
    write(&dir.join(".gitignore"), b"/target\n")?;
    let sdk = match sdk {
        Some(path) => path,
        None => {
            let copy = dir.join("guardian-sdk");
            for (relative, bytes) in SDK_FILES {
                write(&copy.join(relative), bytes)?;
            }
            copy
        }
    };
    Ok(Created {
        dir,
        name: name.clone(),
        sdk,
    })
}

/// A crate name cargo accepts and that is not the SDK's.
fn check_name(name: &str) -> Result<(), AuthoringError> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err(AuthoringError::InvalidName(format!(
            "{name:?} is not a plugin crate name: 1 to 64 of a-z, 0-9, '-', '_', starting with a letter"
        )));
    }
    if name == "guardian-sdk" || name == "guardian_sdk" {
        return Err(AuthoringError::InvalidName(
            "the crate cannot have the SDK's name".into(),
        ));
    }
    Ok(())
}

/// `path` made absolute, if it holds the SDK's manifest.
fn sdk_copy(path: &Path) -> Result<PathBuf, AuthoringError> {
    let manifest = path.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| AuthoringError::InvalidSdk(format!("reading {}: {e}", manifest.display())))?;
    let parsed: toml::Table = toml::from_str(&text)
        .map_err(|e| AuthoringError::InvalidSdk(format!("{}: {e}", manifest.display())))?;
    let name = parsed
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str());
    if name != Some("guardian-sdk") {
        return Err(AuthoringError::InvalidSdk(format!(
            "{} is not the manifest of guardian-sdk",
            manifest.display()
        )));
    }
    std::path::absolute(path)
        .map_err(|e| AuthoringError::InvalidSdk(format!("{}: {e}", path.display())))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), AuthoringError> {
    let io = |e: std::io::Error| AuthoringError::Io(format!("writing {}: {e}", path.display()));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, bytes).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_crate_names_are_refused() {
        for name in ["", "Upper", "1st", "a b", "guardian-sdk", "ü"] {
            assert!(check_name(name).is_err(), "{name:?}");
        }
        for name in ["variance", "dp-mean", "my_plugin2"] {
            assert!(check_name(name).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn the_sdk_copy_is_self_contained() {
        let manifest = SDK_FILES
            .iter()
            .find(|(path, _)| *path == "Cargo.toml")
            .map(|(_, bytes)| String::from_utf8_lossy(bytes).into_owned())
            .expect("the SDK's manifest is embedded");
        assert!(!manifest.contains("workspace"), "{manifest}");
        assert!(manifest.contains("name = \"guardian-sdk\""), "{manifest}");
        for needed in ["src/lib.rs", "wit/plugin.wit", "template/Cargo.toml"] {
            assert!(SDK_FILES.iter().any(|(p, _)| *p == needed), "{needed}");
        }
    }
}
