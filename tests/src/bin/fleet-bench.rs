//! `fleet-bench`: see [`syncfleet_tests::bench`]. Prints the table on stdout, writes JSON with
//! `--json FILE`; exits 1 when a row could not be measured, 130 on Ctrl-C (the controller child
//! is killed and the temporary folders removed in both cases).

use std::process::ExitCode;

use clap::Parser;
use syncfleet_tests::bench::options::{Cli, Hidden};
use syncfleet_tests::bench::{parse, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Hidden::ParseChild { file }) = &cli.hidden {
        return match parse::child(file) {
            Ok(v) => {
                println!("{v}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fleet-bench parse-child: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = cli.opts;
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = run(&opts) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    // Dropping the runtime ends the simulated agents' tasks.
    drop(runtime);
    let (report, errors) = match outcome {
        None => {
            eprintln!(
                "fleet-bench: interrupted; the controller was stopped and temporary files removed"
            );
            return ExitCode::from(130);
        }
        Some(Err(e)) => {
            eprintln!("fleet-bench: {e}");
            return ExitCode::FAILURE;
        }
        Some(Ok(r)) => r,
    };
    print!("{}", report.table());
    let mut json = report.json();
    json["errors"] = serde_json::json!(errors);
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&json).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("fleet-bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    for e in &errors {
        eprintln!("fleet-bench: {e}");
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
