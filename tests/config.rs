//! The YAML configuration: the shipped files, one-line errors naming file, line, column and key,
//! semantic checks, threshold overrides, config path resolution and `monitor config validate`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use monitor::compare::{PartialThresholds, Thresholds};
use monitor::config::{resolve_config_path, Config, ConfigError, ConfigErrorKind};
use monitor::sd::noise::NoiseKind;
use monitor::sd::runtime::ExecutionProvider;
use monitor::sd::scheduler::SchedulerKind;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A temp folder with a minimal model folder `m/` (model_index.json only: validation reads no model).
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("m")).unwrap();
        std::fs::write(dir.path().join("m/model_index.json"), "{}").unwrap();
        Scratch { dir }
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("c.yaml")
    }

    /// Loads `yaml` written to `c.yaml`, expecting an error; returns it.
    fn err(&self, yaml: &str) -> ConfigError {
        std::fs::write(self.file(), yaml).unwrap();
        match Config::load(&self.file()) {
            Ok(_) => panic!("expected an error for:\n{yaml}"),
            Err(e) => e,
        }
    }

    /// The error's one line with the temp file's path replaced by `c.yaml`.
    fn line(&self, yaml: &str) -> String {
        let e = self.err(yaml);
        let s = e.to_string();
        assert!(!s.contains('\n'), "not one line: {s}");
        s.replace(&self.file().display().to_string(), "c.yaml")
    }

    fn ok(&self, yaml: &str) -> Config {
        std::fs::write(self.file(), yaml).unwrap();
        Config::load(&self.file()).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A valid config; each test appends keys to the single case (lines 1–5, case keys indented 4).
const BASE: &str = "model: {path: m}\ncases:\n  - name: a\n    prompt: p\n    seed: 1\n";

fn with_case(extra: &str) -> String {
    format!("{BASE}{extra}")
}

#[test]
fn tiny_yaml_validates() {
    let c = Config::load(&repo().join("configs/tiny.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.model.path, repo().join("onnx/tiny-sd15"));
    assert_eq!(c.model.execution_provider, ExecutionProvider::Cpu);
    assert_eq!(c.cases.len(), 3);
    let schedulers: Vec<SchedulerKind> = c.cases.iter().map(|c| c.scheduler).collect();
    for s in [
        SchedulerKind::Pndm,
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
    ] {
        assert!(schedulers.contains(&s), "tiny.yaml lacks {s}");
    }
    let noises: Vec<NoiseKind> = c.cases.iter().map(|c| c.noise).collect();
    assert!(noises.contains(&NoiseKind::Numpy) && noises.contains(&NoiseKind::TorchCpu));
    for case in &c.cases {
        assert!(
            case.steps <= 20 && case.width <= 128 && case.height <= 128,
            "{} is not small",
            case.name
        );
    }
}

#[test]
fn monitor_yaml_fails_only_on_its_model_path() {
    let path = repo().join("configs/monitor.yaml");
    let errors = Config::load_all_errors(&path).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e.key.as_deref(), Some("model.path"));
    assert_eq!(
        e.to_string(),
        format!("{}:10:9: model.path: model folder /opt/models/stable-diffusion-v1-5-onnx does not exist", path.display())
    );

    // The rest is as the seed article has it.
    let c = Config::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
    assert_eq!(c.model.execution_provider, ExecutionProvider::Cuda);
    let got: Vec<(&str, u64, u32, f32, u32, u32)> = c
        .cases
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.seed,
                c.steps,
                c.guidance_scale,
                c.width,
                c.height,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("landscape", 42, 25, 7.5, 512, 512),
            ("portrait", 123, 30, 8.0, 512, 768),
            ("architecture", 456, 20, 7.0, 768, 512)
        ]
    );
    for case in &c.cases {
        assert_eq!(case.scheduler, SchedulerKind::Pndm);
        assert_eq!(case.noise, NoiseKind::TorchCuda);
    }
    // The write-up's prompts, verbatim.
    assert_eq!(
        c.cases[1].prompt,
        "portrait of a wise old wizard with a long beard, fantasy art, highly detailed"
    );
    assert_eq!(
        c.cases[2].negative_prompt.as_deref(),
        Some("daytime, sunny, traditional")
    );
}

#[test]
fn defaults_and_relative_paths() {
    let s = Scratch::new();
    let c = s.ok(BASE);
    let case = &c.cases[0];
    assert_eq!(
        (case.steps, case.guidance_scale, case.width, case.height),
        (50, 7.5, 512, 512)
    );
    assert_eq!(
        (case.scheduler, case.noise, case.karras),
        (SchedulerKind::Pndm, NoiseKind::Numpy, false)
    );
    assert_eq!(case.negative_prompt, None);
    assert_eq!(
        c.thresholds,
        Thresholds {
            latent_max_abs: 1e-3,
            latent_cosine_min: 0.9999,
            ssim_min: 0.99
        }
    );
    assert_eq!(c.model.path, s.dir.path().join("m"));
    assert_eq!(c.storage.baselines, s.dir.path().join("baselines"));
    assert_eq!(c.storage.database, s.dir.path().join("monitor.db"));
    assert_eq!(c.storage.retention_days, 90);
    assert_eq!(c.onnxruntime.library, None);
    let rt = c.model.runtime_settings();
    assert!(rt.deterministic_compute && !rt.use_tf32 && rt.intra_op_threads.is_none());
}

#[test]
fn malformed_yaml_gives_line_and_column() {
    let s = Scratch::new();
    let e = s.err("model: {path: m\ncases: [\n");
    assert_eq!(e.kind, ConfigErrorKind::Syntax);
    assert_eq!(
        s.line("model: {path: m\ncases: [\n"),
        "c.yaml:2:6: did not find expected ',' or '}', while parsing a flow mapping"
    );
}

#[test]
fn unknown_key_at_top_level() {
    let s = Scratch::new();
    let l = s.line("model: {path: m}\ncolour: red\ncases: [{name: a, prompt: p, seed: 1}]\n");
    assert!(
        l.starts_with("c.yaml:2:1: colour: unknown field `colour`, expected one of `model`,"),
        "{l}"
    );
}

#[test]
fn unknown_key_in_a_case() {
    let s = Scratch::new();
    let l = s.line(&with_case("    colour: red\n"));
    assert!(
        l.starts_with(
            "c.yaml:6:5: cases[0].colour: unknown field `colour`, expected one of `name`,"
        ),
        "{l}"
    );
    let l = s.line(&with_case("    thresholds: {ssim: 0.5}\n"));
    assert!(
        l.starts_with("c.yaml:6:18: cases[0].thresholds.ssim: unknown field `ssim`"),
        "{l}"
    );
}

#[test]
fn string_where_number() {
    let s = Scratch::new();
    assert_eq!(
        s.line(&with_case("    steps: many\n")),
        r#"c.yaml:6:12: cases[0].steps: invalid type: string "many", expected u32"#
    );
    assert_eq!(
        s.err(&with_case("    steps: many\n")).kind,
        ConfigErrorKind::Schema
    );
}

#[test]
fn number_where_string() {
    let s = Scratch::new();
    let yaml = "model: {path: m}\ncases:\n  - name: a\n    prompt: 5\n    seed: 1\n";
    assert_eq!(
        s.line(yaml),
        "c.yaml:4:13: cases[0].prompt: invalid type: integer `5`, expected a string"
    );
    assert_eq!(
        s.line(&with_case("    scheduler: 5\n")),
        "c.yaml:6:16: cases[0].scheduler: invalid type: integer `5`, expected a string"
    );
}

#[test]
fn float_where_integer() {
    let s = Scratch::new();
    assert_eq!(
        s.line(&with_case("    width: 1.5\n")),
        "c.yaml:6:12: cases[0].width: invalid type: floating point `1.5`, expected u32"
    );
}

#[test]
fn list_where_map() {
    let s = Scratch::new();
    assert_eq!(
        s.line(&with_case("    thresholds: [1, 2]\n")),
        "c.yaml:6:17: cases[0].thresholds: invalid type: sequence, expected struct PartialThresholds"
    );
    assert_eq!(
        s.line("model: [m]\ncases: []\n"),
        "c.yaml:1:8: model: invalid type: sequence, expected struct ModelConfig"
    );
}

#[test]
fn map_where_list() {
    let s = Scratch::new();
    assert_eq!(
        s.line("model: {path: m}\ncases: {name: a}\n"),
        "c.yaml:2:8: cases: invalid type: map, expected a sequence"
    );
}

#[test]
fn unknown_names_of_enums() {
    let s = Scratch::new();
    assert_eq!(
        s.line(&with_case("    scheduler: foo\n")),
        "c.yaml:6:16: cases[0].scheduler: unknown scheduler 'foo' (expected one of: pndm, ddim, euler, euler-a, lms, dpmpp-2m)"
    );
    assert_eq!(
        s.line("model: {path: m, execution_provider: tpu}\ncases: [{name: a, prompt: p, seed: 1}]\n"),
        "c.yaml:1:38: model.execution_provider: unknown execution provider 'tpu' (expected cpu or cuda)"
    );
}

#[test]
fn missing_required_keys() {
    let s = Scratch::new();
    assert_eq!(
        s.line("model: {path: m}\n"),
        "c.yaml:1:1: missing field `cases`"
    );
    assert_eq!(
        s.line("# nothing\n"),
        "c.yaml: the file is empty (it needs at least `model` and `cases`)"
    );
    let e = Config::load(&s.dir.path().join("nope.yaml")).unwrap_err();
    assert_eq!(e.kind, ConfigErrorKind::Read);
    assert!(
        e.to_string()
            .contains("nope.yaml: cannot read config file: "),
        "{e}"
    );
}

#[test]
fn duplicate_case_names() {
    let s = Scratch::new();
    let e = s.err(&format!("{BASE}  - name: a\n    prompt: q\n    seed: 2\n"));
    assert_eq!(e.kind, ConfigErrorKind::Invalid);
    assert_eq!(
        s.line(&format!("{BASE}  - name: a\n    prompt: q\n    seed: 2\n")),
        r#"c.yaml:6:11: cases[1].name: duplicate case name "a" (first used by cases[0].name, line 3)"#
    );
}

#[test]
fn width_not_a_multiple_of_8() {
    let s = Scratch::new();
    assert_eq!(
        s.line(&with_case("    width: 500\n")),
        "c.yaml:6:12: cases[0].width: width 500 is not a positive multiple of 8 (the VAE works on 8×8 pixel blocks)"
    );
    assert!(s
        .line(&with_case("    height: 0\n"))
        .starts_with("c.yaml:6:13: cases[0].height: height 0 is not a positive multiple of 8"));
}

#[test]
fn zero_steps() {
    let s = Scratch::new();
    assert_eq!(
        s.line(&with_case("    steps: 0\n")),
        "c.yaml:6:12: cases[0].steps: steps is 0; at least 1 is needed"
    );
}

#[test]
fn bad_guidance() {
    let s = Scratch::new();
    assert_eq!(
        s.line(&with_case("    guidance_scale: -1\n")),
        "c.yaml:6:21: cases[0].guidance_scale: guidance_scale -1 must be a finite number ≥ 0"
    );
    assert!(s
        .line(&with_case("    guidance_scale: .nan\n"))
        .contains("guidance_scale NaN must be"));
}

#[test]
fn thresholds_out_of_range() {
    let s = Scratch::new();
    assert_eq!(
        s.line(&with_case("    thresholds: {latent_cosine_min: 1.5}\n")),
        "c.yaml:6:37: cases[0].thresholds.latent_cosine_min: latent_cosine_min 1.5 is not in (0, 1]"
    );
    assert_eq!(
        s.line(&format!("{BASE}thresholds:\n  latent_cosine_min: 1.5\n")),
        "c.yaml:7:22: thresholds.latent_cosine_min: latent_cosine_min 1.5 is not in (0, 1]"
    );
    assert!(s
        .line(&format!("{BASE}thresholds: {{ssim_min: 0}}\n"))
        .contains("thresholds.ssim_min: ssim_min 0 is not in (0, 1]"));
    assert!(s
        .line(&format!("{BASE}thresholds: {{latent_max_abs: -1.0e-3}}\n"))
        .contains("thresholds.latent_max_abs: latent_max_abs -0.001 must be a finite number ≥ 0"));
}

#[test]
fn noise_file_missing() {
    let s = Scratch::new();
    assert_eq!(
        s.line(&with_case("    noise: file\n")),
        "c.yaml:6:12: cases[0].noise: noise file needs noise_file (a .npy of the initial latents)"
    );
    let l = s.line(&with_case("    noise: file\n    noise_file: nope.npy\n"));
    assert_eq!(
        l,
        format!(
            "c.yaml:7:17: cases[0].noise_file: noise file {} does not exist",
            s.dir.path().join("nope.npy").display()
        )
    );
    // Present: fine, and resolved against the config's folder.
    std::fs::write(s.dir.path().join("n.npy"), b"x").unwrap();
    let c = s.ok(&with_case("    noise: file\n    noise_file: n.npy\n"));
    assert_eq!(
        c.cases[0].noise_file.as_deref(),
        Some(s.dir.path().join("n.npy").as_path())
    );
    assert!(s
        .line(&with_case("    noise_file: n.npy\n"))
        .contains("noise_file is set but noise is numpy"));
}

#[test]
fn euler_ancestral_with_numpy_noise() {
    let s = Scratch::new();
    assert_eq!(
        s.line(&with_case("    scheduler: euler-a\n")),
        "c.yaml:6:16: cases[0].scheduler: euler-a cannot be used with noise numpy: it adds fresh noise every step and diffusers draws that noise from torch's global RNG, which no numpy seed reproduces; use noise torch-cpu or torch-cuda"
    );
    s.ok(&with_case("    scheduler: euler-a\n    noise: torch-cpu\n"));
}

#[test]
fn numpy_seed_out_of_range() {
    let s = Scratch::new();
    let yaml = "model: {path: m}\ncases:\n  - name: a\n    prompt: p\n    seed: 4294967296\n";
    assert!(s.line(yaml).starts_with(
        "c.yaml:5:11: cases[0].seed: seed 4294967296 is out of range for noise numpy"
    ));
    s.ok(&format!("{yaml}    noise: torch-cpu\n"));
}

#[test]
fn missing_model_folder() {
    let s = Scratch::new();
    let yaml = "model:\n  path: models/nope\ncases: [{name: a, prompt: p, seed: 1}]\n";
    assert_eq!(
        s.line(yaml),
        format!(
            "c.yaml:2:9: model.path: model folder {} does not exist",
            s.dir.path().join("models/nope").display()
        )
    );
    std::fs::create_dir(s.dir.path().join("empty")).unwrap();
    let l = s.line("model: {path: empty}\ncases: [{name: a, prompt: p, seed: 1}]\n");
    assert!(
        l.contains("model.path: model folder ")
            && l.contains("has neither model_index.json nor unet/model.onnx"),
        "{l}"
    );
}

#[test]
fn other_semantic_checks() {
    let s = Scratch::new();
    assert_eq!(
        s.line("model: {path: m}\ncases: []\n"),
        "c.yaml:2:8: cases: no cases; at least one is needed"
    );
    assert!(s
        .line("model: {path: m}\ncases: [{name: a/b, prompt: p, seed: 1}]\n")
        .contains(r#"cases[0].name: case name "a/b" is invalid: only letters, digits, '.', '_' and '-' are allowed"#));
    assert!(s
        .line(&with_case("    karras: true\n"))
        .contains("cases[0].karras: karras: true cannot be used"));
    assert!(s
        .line("model: {path: m, threads: 0}\ncases: [{name: a, prompt: p, seed: 1}]\n")
        .contains("model.threads: threads is 0"));
    assert!(s
        .line("model: {path: m}\nonnxruntime: {library: lib.so}\ncases: [{name: a, prompt: p, seed: 1}]\n")
        .contains("onnxruntime.library: ONNX Runtime library "));
}

#[test]
fn all_errors_in_file_order() {
    let s = Scratch::new();
    std::fs::write(
        s.file(),
        "model: {path: nope}\ncases: [{name: a, prompt: p, seed: 1, steps: 0, width: 7}]\n",
    )
    .unwrap();
    let keys: Vec<String> = Config::load_all_errors(&s.file())
        .unwrap_err()
        .into_iter()
        .filter_map(|e| e.key)
        .collect();
    assert_eq!(keys, ["model.path", "cases[0].steps", "cases[0].width"]);
}

#[test]
fn case_thresholds_override_the_global_ones() {
    let s = Scratch::new();
    let c = s.ok(&format!(
        "{BASE}    thresholds: {{ssim_min: 0.5}}\n  - {{name: b, prompt: p, seed: 2}}\nthresholds: {{latent_max_abs: 0.01, ssim_min: 0.95}}\n"
    ));
    let global = Thresholds {
        latent_max_abs: 0.01,
        latent_cosine_min: 0.9999,
        ssim_min: 0.95,
    };
    assert_eq!(c.thresholds, global);
    assert_eq!(
        c.cases[0].thresholds(&c.thresholds),
        Thresholds {
            ssim_min: 0.5,
            ..global
        }
    );
    assert_eq!(c.cases[1].thresholds(&c.thresholds), global);
    let all = PartialThresholds {
        latent_max_abs: Some(1.0),
        latent_cosine_min: Some(0.5),
        ssim_min: Some(0.25),
    };
    assert_eq!(
        global.with_overrides(&all),
        Thresholds {
            latent_max_abs: 1.0,
            latent_cosine_min: 0.5,
            ssim_min: 0.25
        }
    );
}

#[test]
fn config_path_resolution_order() {
    let explicit = Path::new("x.yaml");
    let env = OsStr::new("env.yaml");
    assert_eq!(
        resolve_config_path(Some(explicit), Some(env)),
        PathBuf::from("x.yaml")
    );
    assert_eq!(
        resolve_config_path(Some(explicit), None),
        PathBuf::from("x.yaml")
    );
    assert_eq!(
        resolve_config_path(None, Some(env)),
        PathBuf::from("env.yaml")
    );
    assert_eq!(
        resolve_config_path(None, Some(OsStr::new(""))),
        PathBuf::from("configs/monitor.yaml")
    );
    assert_eq!(
        resolve_config_path(None, None),
        PathBuf::from("configs/monitor.yaml")
    );
}

/// `monitor` in the repo root, with no ONNX Runtime reachable (validation must not need it).
fn monitor(args: &[&str], config_env: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_monitor"));
    cmd.args(args)
        .current_dir(repo())
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("MONITOR_CONFIG");
    if let Some(v) = config_env {
        cmd.env("MONITOR_CONFIG", v);
    }
    cmd.output().expect("run monitor")
}

#[test]
fn validate_command_exit_codes() {
    let o = monitor(
        &["config", "validate", "--config", "configs/tiny.yaml"],
        None,
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "configs/tiny.yaml: ok (3 cases: fox, lighthouse, teapot; model onnx/tiny-sd15)\n"
    );

    // MONITOR_CONFIG is used without --config, and --config wins over it.
    let o = monitor(&["config", "validate"], Some("configs/tiny.yaml"));
    assert_eq!(o.status.code(), Some(0));
    let o = monitor(
        &["config", "validate", "--config", "configs/monitor.yaml"],
        Some("configs/tiny.yaml"),
    );
    assert_eq!(o.status.code(), Some(2));

    // Default: configs/monitor.yaml, whose model folder is not on this machine.
    let o = monitor(&["config", "validate"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "monitor: error: configs/monitor.yaml:10:9: model.path: model folder /opt/models/stable-diffusion-v1-5-onnx does not exist\n"
    );

    let o = monitor(
        &["config", "validate", "--config", "configs/nope.yaml"],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr)
        .starts_with("monitor: error: configs/nope.yaml: cannot read config file: "));
}

#[test]
fn a_secret_of_the_wrong_type_is_refused_without_showing_it() {
    let s = Scratch::new();
    let line = s.line(&format!(
        "{BASE}alerts: {{email: {{smtp_host: h, from: a@b.c, to: [d@e.f], username: u, password: 98765432}}}}\n"
    ));
    assert!(line.starts_with("c.yaml:6:"), "{line}");
    assert!(
        line.contains("alerts.email.password: a secret must be a string"),
        "{line}"
    );
    assert!(!line.contains("98765432"), "{line}");
    // A quoted number is a fine secret.
    s.ok(&format!(
        "{BASE}alerts: {{email: {{smtp_host: h, from: a@b.c, to: [d@e.f], username: u, password: \"98765432\"}}}}\n"
    ));
}
