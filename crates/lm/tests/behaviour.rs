//! The training step's gradients against finite differences, snapshot/restore, and errors
//! on bad model input.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{fixtures, ids, read_json};
use lm::layers::{self, LayerNorm, Linear, RmsNorm, Rope};
use lm::{AdamW, AdamWConfig, LanguageModel, Model};

/// A small graph through every building block the architectures use, in f64.
fn block_loss(x: &Tensor, ln_w: &Tensor, rms_w: &Tensor, wq: &Tensor, wkv: &Tensor, head: &Tensor) -> Tensor {
    let dev = x.device();
    let ln = LayerNorm { weight: ln_w.clone(), bias: (ln_w * 0.5).unwrap(), eps: 1e-5 };
    let rms = RmsNorm::new(rms_w.clone(), 1e-6, true);
    let h = rms.forward(&ln.forward(x).unwrap()).unwrap();
    let q = Linear { weight: wq.clone(), bias: None }.forward(&h).unwrap();
    let kv = Linear { weight: wkv.clone(), bias: Some(wkv.narrow(1, 0, 1).unwrap().squeeze(1).unwrap()) }
        .forward(&h)
        .unwrap();
    let (t, _) = x.dims2().unwrap();
    let rope = Rope::new(t, 4, 10000.0, dev).unwrap();
    let q = rope.apply(&layers::split_heads(&q, 2).unwrap()).unwrap();
    let k = rope.apply(&layers::split_heads(&kv, 1).unwrap()).unwrap();
    let v = layers::gelu_tanh(&layers::split_heads(&kv, 1).unwrap()).unwrap().silu().unwrap();
    let mask = layers::causal_mask(t, Some(3), dev).unwrap().to_dtype(DType::F64).unwrap();
    let a = layers::attention(&q, &k, &v, &mask, 0.5, None).unwrap();
    let logits = a.matmul(&head.t().unwrap()).unwrap();
    layers::cross_entropy(&logits, &[1, 0, 2, 1, 3]).unwrap()
}

#[test]
fn gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let mut seed = 1u64;
    let mut rand = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
            })
            .collect();
        Var::from_vec(v, shape, &dev).unwrap()
    };
    let vars = [rand(&[5, 8]), rand(&[8]), rand(&[8]), rand(&[8, 8]), rand(&[4, 8]), rand(&[6, 8])];
    let loss = |v: &[Var]| {
        block_loss(v[0].as_tensor(), v[1].as_tensor(), v[2].as_tensor(), v[3].as_tensor(), v[4].as_tensor(), v[5].as_tensor())
    };
    let grads = loss(&vars).backward().unwrap();
    let eps = 1e-6;
    let mut worst = 0f64;
    for (vi, var) in vars.iter().enumerate() {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("input {vi} got no gradient")).flatten_all().unwrap();
        let g: Vec<f64> = g.to_vec1().unwrap();
        let base: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..base.len() {
            let eval = |delta: f64| {
                let mut p = base.clone();
                p[i] += delta;
                var.set(&Tensor::from_vec(p, var.shape(), &dev).unwrap()).unwrap();
                let l: f64 = loss(&vars).to_scalar().unwrap();
                l
            };
            let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
            eval(0.0);
            let err = (numeric - g[i]).abs() / (1e-6 + numeric.abs().max(g[i].abs()));
            worst = worst.max(if numeric.abs().max(g[i].abs()) < 1e-7 { 0.0 } else { err });
        }
    }
    assert!(worst < 1e-5, "worst relative gradient error {worst:e}");
}

fn tiny_gpt2() -> Model {
    let mut m = Model::load(&fixtures().join("lm/gpt2"), &Device::Cpu).unwrap();
    m.set_scoring(98, 97).unwrap();
    m
}

#[test]
fn restore_is_bit_identical_and_dropout_is_seeded() {
    // The fixture has every dropout at 0; real GPT-2 has 0.1.
    let d = copy_fixture("dropout");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap().replace("_pdrop\": 0.0", "_pdrop\": 0.1");
    assert_eq!(cfg.matches("_pdrop\": 0.1").count(), 3);
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let mut model = Model::load(&d, &Device::Cpu).unwrap();
    model.set_scoring(98, 97).unwrap();
    let ids: Vec<u32> = (0..30).map(|i| (i * 7 % 98) as u32).collect();
    let before = model.snapshot().unwrap();
    let lp_before = model.target_logprobs(&ids, &ids[1..]).unwrap();
    let mut opt = AdamW::new(AdamWConfig { lr: 1e-2, ..AdamWConfig::default() });
    model.seed(3);
    let with_dropout = model.train_step(&ids, &mut opt, true).unwrap();
    model.train_step(&ids, &mut opt, false).unwrap();
    assert_ne!(model.target_logprobs(&ids, &ids[1..]).unwrap(), lp_before);
    model.restore(&before).unwrap();
    let after = model.snapshot().unwrap();
    for (name, (a, b)) in model.param_names().iter().zip(before_weights(&before).iter().zip(before_weights(&after))) {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} not restored");
    }
    assert_eq!(model.target_logprobs(&ids, &ids[1..]).unwrap(), lp_before);
    // Same seed, same dropout masks, same loss; dropout changes the loss.
    let mut opt = AdamW::new(AdamWConfig { lr: 1e-2, ..AdamWConfig::default() });
    model.seed(3);
    let again = model.train_step(&ids, &mut opt, true).unwrap();
    assert_eq!(again.loss.to_bits(), with_dropout.loss.to_bits());
    model.restore(&before).unwrap();
    let mut opt = AdamW::new(AdamWConfig { lr: 1e-2, ..AdamWConfig::default() });
    let plain = model.train_step(&ids, &mut opt, false).unwrap();
    assert_ne!(plain.loss, with_dropout.loss);
}

fn before_weights(s: &lm::Snapshot) -> Vec<Vec<f32>> {
    s.weights().to_vec()
}

#[test]
fn scoring_rejects_bad_ids_and_chunks() {
    let mut model = tiny_gpt2();
    let err = model.target_logprobs(&[1, 2, 500], &[2]).unwrap_err().to_string();
    assert!(err.contains("token id 500"), "{err}");
    let err = model.target_logprobs(&[1; 40], &[1]).unwrap_err().to_string();
    assert!(err.contains("40 tokens exceed"), "{err}");
    let mut opt = AdamW::new(AdamWConfig::default());
    assert!(model.train_step(&[1], &mut opt, false).is_err());
    assert!(model.set_context_length(33).is_err());
    assert!(lm::scoring::token_logprobs(&model, &[]).is_err());
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tttnn-lm-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn copy_fixture(name: &str) -> std::path::PathBuf {
    let src = fixtures().join("lm/gpt2");
    let d = temp_dir(name);
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), d.join(f)).unwrap();
    }
    d
}

fn load_err(path: &std::path::Path) -> String {
    match Model::load(path, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_model_input_gives_named_errors() {
    // Missing weights.
    let d = copy_fixture("missing");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    let e = load_err(&d);
    assert!(e.contains("no *.safetensors"), "{e}");

    // Truncated weights.
    let d = copy_fixture("truncated");
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&d);
    assert!(e.contains("model.safetensors") && e.contains("truncated or corrupt"), "{e}");

    // Unknown architecture.
    let d = copy_fixture("unknown");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap().replace("\"gpt2\"", "\"mamba\"");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let e = load_err(&d);
    assert!(e.contains("config.json") && e.contains("unknown architecture \"mamba\""), "{e}");

    // A config that disagrees with the weights names the tensor.
    let d = copy_fixture("shape");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap().replace("\"n_positions\": 32", "\"n_positions\": 64");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let e = load_err(&d);
    assert!(e.contains("wpe.weight") && e.contains("[32, 48]"), "{e}");

    // No such path; a file that is neither folder nor GGUF.
    assert!(load_err(&d.join("nope")).contains("no such model"));
    assert!(load_err(&d.join("config.json")).contains("expected a Hugging Face model folder or a .gguf"));
}

/// A GGUF whose tensor has a type candle cannot read (IQ2_XXS, code 16).
#[test]
fn gguf_with_unsupported_tensor_type_names_the_tensor() {
    let mut b = Vec::new();
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend((x.len() as u64).to_le_bytes());
        b.extend(x.as_bytes());
    };
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend(2u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata entries
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    s(&mut b, "llama");
    for (name, ty) in [("token_embd.weight", 0u32), ("blk.0.attn_q.weight", 16u32)] {
        s(&mut b, name);
        b.extend(1u32.to_le_bytes());
        b.extend(256u64.to_le_bytes());
        b.extend(ty.to_le_bytes());
        b.extend(0u64.to_le_bytes());
    }
    b.resize(b.len().div_ceil(32) * 32 + 2048, 0);
    let p = temp_dir("gguf").join("bad.gguf");
    std::fs::write(&p, b).unwrap();
    let e = load_err(&p);
    assert!(e.contains("bad.gguf") && e.contains("blk.0.attn_q.weight") && e.contains("type 16"), "{e}");
}

/// A truncated real GGUF names the first tensor that runs past the end.
#[test]
fn truncated_gguf_names_the_tensor() {
    let Some(real) = common::asset("smollm2-135m.gguf") else { return };
    let mut f = std::fs::File::open(real).unwrap();
    let mut head = vec![0u8; 8 << 20];
    std::io::Read::read_exact(&mut f, &mut head).unwrap();
    let p = temp_dir("gguf-trunc").join("cut.gguf");
    std::fs::write(&p, head).unwrap();
    let e = load_err(&p);
    assert!(e.contains("cut.gguf") && e.contains("tensor ") && e.contains("remaining in file"), "{e}");
}

#[test]
fn tied_head_is_one_parameter() {
    let model = tiny_gpt2();
    let exp = read_json(&fixtures().join("lm/gpt2/expected.json"));
    assert_eq!(model.info().n_params as u64, exp["train"]["n_params"].as_u64().unwrap());
    assert!(!model.param_names().iter().any(|n| n.contains("lm_head")));
    let _ = ids(&exp["train"]["ids"]);
}
