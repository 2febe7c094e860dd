//! Command-line options and the simulator configuration.

use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Longest single simulated delay (a day): keeps timer arithmetic in range.
pub const MAX_SIMULATED: Duration = Duration::from_secs(86_400);

/// Which engine's HTTP dialect the simulator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineKind {
    /// vLLM's OpenAI-compatible server.
    Vllm,
    /// SGLang's HTTP server.
    Sglang,
}

impl EngineKind {
    /// Lower-case engine name, as printed in logs and `owned_by`.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Vllm => "vllm",
            EngineKind::Sglang => "sglang",
        }
    }
}

/// Command line of the `kvroute-sim` binary.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "kvroute-sim",
    version,
    about = "Simulated vLLM/SGLang engine with a prefix cache and a latency model"
)]
pub struct Cli {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind (0 picks a free port; the real one is printed).
    #[arg(long)]
    pub port: u16,
    /// Engine behaviour and latency model.
    #[command(flatten)]
    pub sim: SimConfig,
}

/// Everything that shapes the simulated engine (all durations before `time_scale`).
#[derive(Debug, Clone, clap::Args)]
pub struct SimConfig {
    /// Engine dialect: routes, error bodies and metric names.
    #[arg(long, value_enum, default_value = "vllm")]
    pub engine: EngineKind,
    /// Served model name; repeat for several names (requests for others get 404).
    #[arg(long = "model", required = true, num_args = 1)]
    pub models: Vec<String>,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub block_size: u32,
    /// KV cache capacity in blocks.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub kv_blocks: u64,
    /// Characters (bytes) per token of the approximate text tokenizer.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub chars_per_token: u32,
    /// Fixed cost of a prefill step, in milliseconds.
    #[arg(long, default_value_t = 2.0)]
    pub prefill_overhead_ms: f64,
    /// Prefill cost per uncached prompt token, in microseconds.
    #[arg(long, default_value_t = 20.0)]
    pub prefill_us_per_token: f64,
    /// Inter-token latency of decoding, in microseconds.
    #[arg(long, default_value_t = 10_000.0)]
    pub decode_us_per_token: f64,
    /// Requests running at once; the rest wait in a FIFO queue.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_running: u32,
    /// Each other running request stretches prefill and decode by this fraction.
    #[arg(long, default_value_t = 0.02)]
    pub load_factor: f64,
    /// Prefill compute is one queue per engine, as on a GPU (prefill is compute-bound):
    /// concurrent prefills run one after another instead of side by side, so cache misses
    /// under load delay every request's first token.
    #[arg(long)]
    pub serial_prefill: bool,
    /// Delay before `/health` answers, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub health_delay_ms: u64,
    /// Seed of the generated text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Multiplies every simulated duration (0.1 = ten times faster).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Context length in tokens (prompt plus completion).
    #[arg(long, default_value_t = 32768, value_parser = clap::value_parser!(u32).range(1..))]
    pub context_length: u32,
    /// Adds an `x-kvroute-sim-id` response header with this value.
    #[arg(long)]
    pub id: Option<String>,
    /// Serves neither `/health` nor `/metrics` (404), like the llama.cpp server: for tests of
    /// engines the router knows nothing about.
    #[arg(long)]
    pub no_health_metrics: bool,
    /// Local HF `tokenizer.json` (or its directory, with `tokenizer_config.json` for chat):
    /// prompts are tokenized for real and blocks hashed like vLLM.
    #[arg(long)]
    pub tokenizer: Option<std::path::PathBuf>,
    /// `PYTHONHASHSEED` of the vLLM block hashes (`sha256_cbor`) of token-id prompts.
    #[arg(long, default_value = "0")]
    pub hash_seed: String,
    /// Publish KV events on a ZMQ PUB socket bound here (`tcp://127.0.0.1:5557`).
    #[arg(long)]
    pub kv_events_endpoint: Option<String>,
    /// ZMQ ROUTER replay socket bound here, answering a start sequence number.
    #[arg(long, requires = "kv_events_endpoint")]
    pub kv_events_replay_endpoint: Option<String>,
    /// Topic of the KV events (default `kv@<host:port>@<model>`).
    #[arg(long)]
    pub kv_events_topic: Option<String>,
    /// Event layout: vLLM's tagged arrays or maps with a `type` field.
    #[arg(long, value_enum, default_value = "array")]
    pub kv_events_encoding: EventEncoding,
    /// The loaded tokenizer (from `--tokenizer`).
    #[arg(skip)]
    pub loaded_tokenizer: Option<std::sync::Arc<kvroute_core::tokenize::PromptTokenizer>>,
}

/// KV-event layout on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum EventEncoding {
    /// `["BlockStored", ...]`.
    #[default]
    Array,
    /// `{"type": "BlockStored", ...}`.
    Map,
}

impl EventEncoding {
    /// The codec's layout.
    pub fn wire(self) -> kvroute_core::kv_events::Encoding {
        match self {
            EventEncoding::Array => kvroute_core::kv_events::Encoding::Array,
            EventEncoding::Map => kvroute_core::kv_events::Encoding::Map,
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            engine: EngineKind::Vllm,
            models: vec!["sim-model".to_string()],
            block_size: 16,
            kv_blocks: 4096,
            chars_per_token: 4,
            prefill_overhead_ms: 2.0,
            prefill_us_per_token: 20.0,
            decode_us_per_token: 10_000.0,
            max_running: 64,
            load_factor: 0.02,
            serial_prefill: false,
            health_delay_ms: 0,
            seed: 0,
            time_scale: 1.0,
            context_length: 32768,
            id: None,
            no_health_metrics: false,
            tokenizer: None,
            hash_seed: "0".to_string(),
            kv_events_endpoint: None,
            kv_events_replay_endpoint: None,
            kv_events_topic: None,
            kv_events_encoding: EventEncoding::Array,
            loaded_tokenizer: None,
        }
    }
}

impl SimConfig {
    /// Scales a simulated duration in microseconds by `time_scale`, clamped to
    /// `[0, MAX_SIMULATED]` (nonsense inputs never panic).
    pub fn scaled(&self, micros: f64) -> Duration {
        let us = micros * self.time_scale;
        if us.is_finite() && us > 0.0 {
            Duration::try_from_secs_f64(us / 1e6)
                .unwrap_or(MAX_SIMULATED)
                .min(MAX_SIMULATED)
        } else {
            Duration::ZERO
        }
    }

    /// Name reported in metric labels (the first served model).
    pub fn primary_model(&self) -> &str {
        self.models.first().map(String::as_str).unwrap_or("")
    }

    /// Loads `--tokenizer`, if given, into `loaded_tokenizer`.
    pub fn load_tokenizer(&mut self) -> Result<(), String> {
        if let Some(path) = &self.tokenizer {
            let t =
                kvroute_core::tokenize::PromptTokenizer::load(path).map_err(|e| e.to_string())?;
            self.loaded_tokenizer = Some(std::sync::Arc::new(t));
        }
        Ok(())
    }

    /// The LoRA key of `model`'s blocks: none for the primary model, the name for the others
    /// (vLLM serves adapters under their own model names).
    pub fn lora_of<'a>(&self, model: &'a str) -> Option<&'a str> {
        (model != self.primary_model()).then_some(model)
    }

    /// Bytes of prompt text per KV block.
    pub fn block_bytes(&self) -> usize {
        self.block_size as usize * self.chars_per_token as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_durations_are_clamped() {
        let cfg = SimConfig {
            time_scale: 0.5,
            ..SimConfig::default()
        };
        assert_eq!(cfg.scaled(2000.0), Duration::from_millis(1));
        assert_eq!(cfg.scaled(-5.0), Duration::ZERO);
        assert_eq!(cfg.scaled(f64::NAN), Duration::ZERO);
        assert_eq!(cfg.scaled(1e300), MAX_SIMULATED);
    }

    #[test]
    fn cli_parses_repeated_models_and_defaults() {
        let cli = Cli::parse_from([
            "kvroute-sim",
            "--port",
            "0",
            "--model",
            "a",
            "--model",
            "b",
            "--engine",
            "sglang",
        ]);
        assert_eq!(cli.sim.models, ["a", "b"]);
        assert_eq!(cli.sim.engine, EngineKind::Sglang);
        assert_eq!(cli.host, "127.0.0.1");
        assert_eq!(cli.sim.block_size, SimConfig::default().block_size);
        assert_eq!(
            cli.sim.decode_us_per_token,
            SimConfig::default().decode_us_per_token
        );
        assert!(
            Cli::try_parse_from([
                "kvroute-sim",
                "--port",
                "0",
                "--model",
                "a",
                "--block-size",
                "0"
            ])
            .is_err()
        );
    }
}
