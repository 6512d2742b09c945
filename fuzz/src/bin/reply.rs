//! AFL target: the backend reply splitter (`libs::resp::reply_len`) and the
//! readers that run on its frames. See `reborn_fuzz::reply`.

fn main() {
    afl::fuzz!(|data: &[u8]| reborn_fuzz::reply(data));
}
