fn main() -> std::process::ExitCode {
    approxifer::cli::main()
}
