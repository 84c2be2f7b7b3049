//! `syncfleet`: the operator CLI. All logic lives in `syncfleet_controller::cli`.

fn main() -> std::process::ExitCode {
    syncfleet_controller::cli::main()
}
