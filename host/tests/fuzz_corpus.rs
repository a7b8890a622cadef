//! Replays the committed fuzzing corpus (`fuzz/corpus/<target>/`, minimised by
//! AFL++), the hand-made seeds it grew from (`fuzz/seeds/<target>/`) and the kept
//! crash reproducers (`fuzz/regressions/<target>/`) through the fuzz targets of
//! `guardian::fuzz_targets`, so that every input the fuzzer found interesting
//! keeps being checked on stable Rust in the normal test suite, without AFL.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use guardian::fuzz_targets::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every input of `target` and names each one that panicked.
fn check(target: &str, run: fn(&[u8])) {
    let mut inputs = files(&fuzz_dir().join("corpus").join(target));
    assert!(!inputs.is_empty(), "fuzz/corpus/{target}/ is empty");
    for kind in ["seeds", "regressions"] {
        inputs.extend(files(&fuzz_dir().join(kind).join(target)));
    }
    let failed: Vec<String> = inputs
        .iter()
        .filter(|path| {
            let bytes = std::fs::read(path).unwrap();
            std::panic::catch_unwind(|| run(&bytes)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target} panicked on {failed:#?}");
}

#[test]
fn report_json_corpus() {
    check("report_json", guardian::fuzz_targets::report_json);
}

#[test]
fn share_validate_corpus() {
    check("share_validate", guardian::fuzz_targets::share_validate);
}

#[test]
fn share_codec_corpus() {
    check("share_codec", guardian::fuzz_targets::share_codec);
}

#[test]
fn jwt_header_corpus() {
    check("jwt_header", guardian::fuzz_targets::jwt_header);
}

#[test]
fn plugin_upload_corpus() {
    check("plugin_upload", guardian::fuzz_targets::plugin_upload);
}

/// The seed tokens signed with the target's keys get past the signature check
/// (so the fixed clock and key set still fit them), and the hostile ones do not.
#[test]
fn jwt_seeds_reach_the_intended_outcome() {
    let dir = fuzz_dir().join("seeds/jwt_header");
    let outcome = |name: &str| {
        let header = std::fs::read(dir.join(name)).unwrap();
        guardian::fuzz_targets::authenticate(&header).unwrap()
    };
    for (name, sub) in [
        ("rs256_user", "alice"),
        ("rs256_admin", "root"),
        ("es256_user", "alice"),
        ("eddsa_user", "alice"),
        ("lowercase_scheme", "alice"),
    ] {
        assert_eq!(outcome(name).unwrap().sub, sub, "{name}");
    }
    for (name, code) in [
        ("rs256_expired", "token_expired"),
        ("es256_with_rsa_kid", "key_mismatch"),
        // The RSA key's JWK pins `alg: RS256`.
        ("ps256_scientist", "key_mismatch"),
        ("rs256_unknown_kid", "unknown_key"),
        ("none_alg", "algorithm_not_allowed"),
        ("hs256", "algorithm_not_allowed"),
    ] {
        assert_eq!(outcome(name).unwrap_err().code, code, "{name}");
    }
}

/// Every corpus and regression directory belongs to a target, and every target
/// has a corpus: a renamed target cannot silently stop being replayed.
#[test]
fn corpus_directories_match_the_targets() {
    let names: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    for kind in ["corpus", "seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind)) else {
            continue;
        };
        for entry in entries {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(
                names.contains(&name.as_str()),
                "fuzz/{kind}/{name}: no such target"
            );
        }
    }
    for name in names {
        assert!(
            fuzz_dir().join("corpus").join(name).is_dir(),
            "no corpus for {name}"
        );
    }
}
