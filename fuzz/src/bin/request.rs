//! AFL target: the client request parser (`libs::resp::parse_request`). See
//! `reborn_fuzz::request` for what is checked beyond "does not crash".

fn main() {
    afl::fuzz!(|data: &[u8]| reborn_fuzz::request(data));
}
