//! The committed generated shaders are exactly what `scripts/gen_unrolled_kernels.py` writes (a
//! hand edit to them, or a generator change not re-run, fails here). Needs python3; where there is
//! none, the test says so and checks nothing.

use std::path::Path;
use std::process::Command;

fn check(dir: &Path, script: &Path) -> Option<std::process::Output> {
    Command::new("python3")
        .arg(script)
        .arg("--check")
        .current_dir(dir)
        .output()
        .ok()
}

#[test]
fn generated_shaders_match_their_generator() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/gen_unrolled_kernels.py");
    let Some(out) = check(root, &script) else {
        eprintln!("python3 not found: generated shaders not checked");
        return;
    };
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The check does fail on a stale copy.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("shaders")).unwrap();
    let generated = [
        "linear_subgroup_wide.wgsl",
        "linear_texture.wgsl",
        "attention_subgroup.wgsl",
    ];
    for name in generated {
        let text = std::fs::read_to_string(root.join("shaders").join(name)).unwrap();
        std::fs::write(
            tmp.path().join("shaders").join(name),
            text.replacen("fn ", "fn  ", 1),
        )
        .unwrap();
    }
    let out = check(tmp.path(), &script).unwrap();
    assert!(!out.status.success(), "--check accepted an edited shader");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(generated.iter().all(|name| said.contains(name)), "{said}");
}
