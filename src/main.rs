fn main() {
    std::process::exit(rulekeeper::cli::main().code());
}
