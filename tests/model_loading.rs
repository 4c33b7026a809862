//! Checkpoint formats: GPT-2's original vocab.json + merges.txt instead of tokenizer.json, and
//! f16 weights, load and give the same results as the fixture they were made from.

mod common;

use std::path::{Path, PathBuf};

use common::assert_close;
use revattn::loss::{LossKind, LossRequest, Sequence};
use revattn::model::Model;
use revattn::pass::ForwardOptions;
use revattn::reference;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn copy_without(from: &Path, to: &Path, skip: &str) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != skip {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn vocab_and_merges_tokenize_like_tokenizer_json() {
    let src = fixture("tiny-odd");
    let tmp = tempfile::tempdir().unwrap();
    copy_without(&src, tmp.path(), "tokenizer.json");
    // Write GPT-2's original files from the fixture's tokenizer.json.
    let tj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer.json")).unwrap())
            .unwrap();
    std::fs::write(
        tmp.path().join("vocab.json"),
        tj["model"]["vocab"].to_string(),
    )
    .unwrap();
    let mut merges = String::from("#version: 0.2\n");
    for m in tj["model"]["merges"].as_array().unwrap() {
        let pair = m.as_array().unwrap();
        merges += &format!(
            "{} {}\n",
            pair[0].as_str().unwrap(),
            pair[1].as_str().unwrap()
        );
    }
    std::fs::write(tmp.path().join("merges.txt"), merges).unwrap();
    let (a, b) = (Model::load(&src).unwrap(), Model::load(tmp.path()).unwrap());
    for text in [
        "I like Italy and France. I visited the city of",
        " Florence",
        "Q: 12 + 7\nA: 19\n\n",
        "  spaces  and\ttabs",
    ] {
        assert_eq!(
            a.tokenizer.encode(text).unwrap(),
            b.tokenizer.encode(text).unwrap(),
            "{text:?}"
        );
    }
}

#[test]
fn f16_checkpoint_loads_and_matches_f32() {
    let src = fixture("tiny-prefixed");
    let tmp = tempfile::tempdir().unwrap();
    copy_without(&src, tmp.path(), "model.safetensors");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let halves: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let data: Vec<u8> = v
                .data()
                .chunks_exact(4)
                .flat_map(|b| {
                    f32_to_f16(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes()
                })
                .collect();
            (name, v.shape().to_vec(), data)
        })
        .collect();
    let views: Vec<(String, TensorView)> = halves
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                TensorView::new(Dtype::F16, s.clone(), d).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        tmp.path().join("model.safetensors"),
        safetensors::tensor::serialize(views, None).unwrap(),
    )
    .unwrap();

    let (full, half) = (Model::load(&src).unwrap(), Model::load(tmp.path()).unwrap());
    let req = LossRequest {
        prompt: "I visited the city of",
        target: " Florence",
        foil: None,
        kind: LossKind::Nll,
        bos: false,
    };
    let seq = Sequence::build(&full.tokenizer, &req, full.config.n_positions).unwrap();
    let a = reference::forward_backward(
        &full.config,
        &full.weights,
        &seq,
        &ForwardOptions::default(),
    );
    let b = reference::forward_backward(
        &half.config,
        &half.weights,
        &seq,
        &ForwardOptions::default(),
    );
    // f16 rounding of every weight (relative 2⁻¹¹) moves the logits by about that much.
    let logits: Vec<f32> = b.logits.iter().map(|&x| x as f32).collect();
    assert_close("f16 checkpoint logits vs f32", &logits, &a.logits, 2e-2);
}

/// Round-to-nearest-even f32 → f16 bits for normal values (the fixture's weights are all normal).
fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mant = bits & 0x7f_ffff;
    if x == 0.0 || exp <= 0 {
        return sign;
    }
    let mut h = (sign as u32) | ((exp as u32) << 10) | (mant >> 13);
    let rest = mant & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && (h & 1) == 1) {
        h += 1;
    }
    h as u16
}
