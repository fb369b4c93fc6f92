mod forward;
mod npy;
mod weights;
use burn::prelude::*;
fn main() -> anyhow::Result<()> {
    let device = Device::flex();
    let args: Vec<String> = std::env::args().collect();
    let t = std::time::Instant::now();
    forward::run("efficientnet_lite0", args[1].as_ref(), args[2].as_ref(), args[3].as_ref(), &device)?;
    println!("{:?}", t.elapsed());
    Ok(())
}
