fn main() -> std::process::ExitCode {
    rulekeeper::cli::main().into()
}
