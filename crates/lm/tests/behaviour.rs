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
    let q = Linear { weight: wq.clone(), bias: None, transposed: false }.forward(&h).unwrap();
    let kv = Linear { weight: wkv.clone(), bias: Some(wkv.narrow(1, 0, 1).unwrap().squeeze(1).unwrap()), transposed: false }
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

/// f64 variables of a given shape, uniform in [-0.5, 0.5), from a seeded LCG.
fn seeded_vars(mut seed: u64) -> impl FnMut(&[usize]) -> Var {
    move |shape: &[usize]| {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
            })
            .collect();
        Var::from_vec(v, shape, &Device::Cpu).unwrap()
    }
}

#[test]
fn gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let mut rand = seeded_vars(1);
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

/// The fused CPU kernels (attention with grouped-query heads and a sliding window, RoPE on
/// `[T, H, D]`, SwiGLU, GELU, LayerNorm, RMSNorm, Linear with a transposed weight view, the
/// output head and the cross-entropy) or the composed generic ops, in f64.
fn fused_block_loss(v: &[Var], fused: bool) -> Tensor {
    let (x, ln_w, rms_w, wq, wkv, head, w_up) =
        (v[0].as_tensor(), v[1].as_tensor(), v[2].as_tensor(), v[3].as_tensor(), v[4].as_tensor(), v[5].as_tensor(), v[6].as_tensor());
    let dev = x.device();
    let (t, _) = x.dims2().unwrap();
    let ln = LayerNorm { weight: ln_w.clone(), bias: (ln_w * 0.5).unwrap(), eps: 1e-5 };
    let rms = RmsNorm::new(rms_w.clone(), 1e-6, true);
    // A Conv1D-style weight: stored [in, out], used as its transpose.
    let lin = |w: &Tensor, b: Option<Tensor>, transposed| Linear { weight: w.clone(), bias: b, transposed };
    let (h, q, kv) = if fused {
        let h = rms.forward(&ln.forward(x).unwrap()).unwrap();
        let q = lin(wq, None, false).forward(&h).unwrap();
        let kv = lin(wkv, Some(wkv.narrow(0, 0, 1).unwrap().squeeze(0).unwrap()), true).forward(&h).unwrap();
        (h, q, kv)
    } else {
        let h = rms.forward_composed(&ln.forward_composed(x).unwrap()).unwrap();
        let q = lin(wq, None, false).forward_composed(&h).unwrap();
        let kv = lin(wkv, Some(wkv.narrow(0, 0, 1).unwrap().squeeze(0).unwrap()), true)
            .forward_composed(&h)
            .unwrap();
        (h, q, kv)
    };
    let rope = Rope::new(t, 4, 10000.0, dev).unwrap();
    let k = kv.narrow(1, 0, 8).unwrap();
    let vv = kv.narrow(1, 8, 8).unwrap();
    let mut total: Option<Tensor> = None;
    for window in [None, Some(3)] {
        let a = if fused {
            let q = rope.apply_thd(&q, 4).unwrap();
            let k = rope.apply_thd(&k, 2).unwrap();
            let v = layers::swiglu(&layers::gelu_tanh(&vv).unwrap(), &vv).unwrap();
            layers::causal_attention(&q, &k, &v, 4, 2, 0.5, window, None).unwrap()
        } else {
            let heads = |x: &Tensor, n: usize| layers::split_heads(x, n).unwrap();
            let rep = |x: Tensor| x.unsqueeze(1).unwrap().broadcast_as((2, 2, t, 4)).unwrap().reshape((4, t, 4)).unwrap();
            let q = rope.apply(&heads(&q, 4)).unwrap();
            let k = rep(rope.apply(&heads(&k, 2)).unwrap());
            let g = vv.gelu().unwrap();
            let v = rep(heads(&g.silu().unwrap().mul(&vv).unwrap(), 2));
            let mask = layers::causal_mask(t, window, dev).unwrap().to_dtype(DType::F64).unwrap();
            layers::attention(&q, &k, &v, &mask, 0.5, None).unwrap()
        };
        let a = (a + &h.narrow(1, 0, 16).unwrap()).unwrap();
        let logits = if fused {
            layers::head(&lin(w_up, None, false).forward(&a).unwrap(), head).unwrap()
        } else {
            lin(w_up, None, false).forward_composed(&a).unwrap().matmul(&head.t().unwrap()).unwrap()
        };
        let targets = [1, 0, 2, 1, 3, 5];
        let l = if fused { layers::cross_entropy(&logits, &targets) } else { layers::cross_entropy_composed(&logits, &targets) }
            .unwrap();
        total = Some(match total {
            Some(s) => (s + l).unwrap(),
            None => l,
        });
    }
    total.unwrap()
}

#[test]
fn fused_ops_match_composed_ops_and_finite_differences() {
    let dev = Device::Cpu;
    let mut rand = seeded_vars(7);
    // x [T=6, 16], q 4 heads × 4, k/v 2 heads × 4 (stored [in, out] = [16, 16]).
    let vars = [rand(&[6, 16]), rand(&[16]), rand(&[16]), rand(&[16, 16]), rand(&[16, 16]), rand(&[7, 16]), rand(&[16, 16])];
    let fused: f64 = fused_block_loss(&vars, true).to_scalar().unwrap();
    let composed: f64 = fused_block_loss(&vars, false).to_scalar().unwrap();
    assert!((fused - composed).abs() < 1e-12 * composed.abs().max(1.0), "fused {fused} vs composed {composed}");
    let g_fused = fused_block_loss(&vars, true).backward().unwrap();
    let g_comp = fused_block_loss(&vars, false).backward().unwrap();
    let eps = 1e-6;
    let mut worst = 0f64;
    let mut worst_vs_composed = 0f64;
    for (vi, var) in vars.iter().enumerate() {
        let grad = |g: &candle_core::backprop::GradStore| -> Vec<f64> {
            let g = g.get(var.as_tensor()).unwrap_or_else(|| panic!("input {vi} got no gradient"));
            g.flatten_all().unwrap().to_vec1().unwrap()
        };
        let (gf, gc) = (grad(&g_fused), grad(&g_comp));
        let base: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..base.len() {
            let e = (gf[i] - gc[i]).abs() / gf[i].abs().max(gc[i].abs()).max(1e-3);
            worst_vs_composed = worst_vs_composed.max(e);
            let eval = |delta: f64| {
                let mut p = base.clone();
                p[i] += delta;
                var.set(&Tensor::from_vec(p, var.shape(), &dev).unwrap()).unwrap();
                let l: f64 = fused_block_loss(&vars, true).to_scalar().unwrap();
                l
            };
            let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
            eval(0.0);
            // Relative error, floored at 1e-3 in magnitude: the finite difference of a loss
            // of ~4 carries ~1e-10 absolute rounding error.
            worst = worst.max((numeric - gf[i]).abs() / numeric.abs().max(gf[i].abs()).max(1e-3));
        }
    }
    eprintln!("fused kernels: worst relative error vs finite differences {worst:e}, vs composed ops {worst_vs_composed:e}");
    // candle's own GELU backward uses 6-digit constants, so the composed gradients are the
    // less exact ones (~2e-5 here; the fused ones agree with finite differences to ~1e-6).
    assert!(worst_vs_composed < 1e-4, "fused vs composed gradients differ by {worst_vs_composed:e}");
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

#[test]
fn gradient_sink_matches_candles_gradients() {
    // f32 weights (the sink holds f32 parameters): a plain [out, in] weight used twice in one
    // step (accumulated in the sink), a Conv1D-style [in, out] weight with a bias, and a head
    // tied to an embedding (summed from the sink and candle's store by the optimizer).
    let mut var = seeded_vars(7);
    let to_f32 = |v: Var| Var::from_tensor(&v.as_tensor().to_dtype(DType::F32).unwrap()).unwrap();
    let (w, conv, bias, emb) =
        (to_f32(var(&[6, 6])), to_f32(var(&[6, 5])), to_f32(var(&[5])), to_f32(var(&[5, 6])));
    let x = to_f32(var(&[4, 6]));
    let loss = |fused: bool| {
        let lin = Linear { weight: w.as_tensor().clone(), bias: None, transposed: false };
        let c1d = Linear { weight: conv.as_tensor().clone(), bias: Some(bias.as_tensor().clone()), transposed: true };
        let go = |l: &Linear, h: &Tensor| if fused { l.forward(h) } else { l.forward_composed(h) }.unwrap();
        let h = go(&lin, &go(&lin, x.as_tensor()).tanh().unwrap());
        let y = go(&c1d, &h);
        let e = layers::embed(emb.as_tensor(), &[1, 3, 4, 0]).unwrap();
        (y.mul(&e.narrow(1, 0, 5).unwrap()).unwrap().sum_all().unwrap()
            + layers::head(&h, emb.as_tensor()).unwrap().sqr().unwrap().sum_all().unwrap())
        .unwrap()
    };
    let params = [w.clone(), conv.clone(), bias.clone(), emb.clone()];
    let reference = loss(false).backward().unwrap();
    let sink = lm::grads::GradSink::new(&params);
    let store = sink.collect(|| loss(true).backward()).unwrap();
    for (i, p) in params.iter().enumerate() {
        let want: Vec<f32> = reference.get(p.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let in_store = store.get(p.as_tensor()).map(|g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let got: Vec<f32> = match (in_store, sink.get(i)) {
            (Some(a), Some(b)) => a.iter().zip(&b.data).map(|(x, y)| x + y).collect(),
            (None, Some(b)) => b.data.clone(),
            (Some(a), None) => a,
            (None, None) => panic!("parameter {i} got no gradient"),
        };
        let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs() / a.abs().max(1.0)).fold(0f32, f32::max);
        assert!(worst < 1e-5, "parameter {i}: worst difference {worst:e}");
    }
    // The Linear weights went to the sink, not to candle's store.
    assert!(store.get(w.as_tensor()).is_none() && store.get(conv.as_tensor()).is_none());
    assert!(sink.get(0).is_some() && sink.get(3).is_some());
    sink.clear();
    assert!(sink.get(0).is_none());
}
