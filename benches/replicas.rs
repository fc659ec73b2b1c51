//! Replicas on PostgreSQL (issue 14): placeholder, the rows come in the next commit.

fn main() {}
