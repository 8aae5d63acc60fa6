//! The tests' fake Anthropic Messages API (`tests/support/runner/fake_anthropic.rs`)
//! as a standalone process, for `make demo` (`e2e/demo.sh`): the gateway's
//! `--anthropic-api-url` points at it, so a run's model requests are metered
//! from usage figures known in advance.
//!
//! ```sh
//! cargo run --example fake_anthropic -- --input-tokens 9120 --output-tokens 1043 --url-out url
//! ```
//!
//! Every request to `/v1/messages` is answered with a final text turn
//! reporting the given usage. Serves until SIGTERM or Ctrl-C; prints the
//! number of requests it answered on exit.

#[path = "../tests/support/runner/fake_anthropic.rs"]
mod fake_anthropic;

use std::path::PathBuf;

use clap::Parser;
use fake_anthropic::{FakeAnthropic, Turn, TurnUsage};

/// A fake Anthropic Messages API as a standalone process.
#[derive(Parser, Debug)]
#[command(name = "fake_anthropic")]
struct Args {
    /// Input tokens every answer reports.
    #[arg(long, default_value_t = 1000)]
    input_tokens: u64,
    /// Output tokens every answer reports.
    #[arg(long, default_value_t = 100)]
    output_tokens: u64,
    /// The text every answer carries.
    #[arg(long, default_value = "Done.")]
    text: String,
    /// Write the base URL (`http://127.0.0.1:<port>`) here once serving.
    #[arg(long)]
    url_out: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let usage = TurnUsage {
        input_tokens: args.input_tokens,
        output_tokens: args.output_tokens,
    };
    let fake = FakeAnthropic::start(vec![Turn::Text(args.text.clone())], usage).await;
    if let Some(path) = &args.url_out {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &fake.base_url).expect("writing --url-out");
        std::fs::rename(&tmp, path).expect("writing --url-out");
    }
    eprintln!("fake Anthropic API serving on {}", fake.base_url);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    eprintln!(
        "fake Anthropic API: {} requests answered",
        fake.message_requests().len()
    );
}
