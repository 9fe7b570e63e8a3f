fn main() { eprintln!("agentd: not yet"); }
