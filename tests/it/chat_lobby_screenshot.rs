//! Checks the screenshot the chat lobby took of itself under Xvfb (`.ci/run`'s
//! window step runs the example with `--script`, then this test): the picture has
//! the window's size and is not blank: many colours, no colour covering most of
//! it, the avatars' saturated squares, and text in the chat panel on the right.
//!
//! Ignored by default, since it needs that screenshot:
//!
//! ```text
//! CHAT_LOBBY_SCREENSHOT=target/chat_lobby_check/shot.png \
//!     cargo test --all-features --test it -- --ignored chat_lobby_screenshot::
//! ```
#![cfg(feature = "ui")]

use std::collections::HashMap;

use bevy::asset::RenderAssetUsages;
use bevy::image::{CompressedImageFormats, Image, ImageSampler, ImageType};

#[test]
#[ignore = "needs the screenshot of .ci/run's window step"]
fn the_chat_lobby_screenshot_is_not_blank() {
    let path = std::env::var("CHAT_LOBBY_SCREENSHOT")
        .unwrap_or_else(|_| "target/chat_lobby_check/shot.png".into());
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let image = Image::from_buffer(
        &bytes,
        ImageType::Extension("png"),
        CompressedImageFormats::NONE,
        true,
        ImageSampler::Default,
        RenderAssetUsages::default(),
    )
    .expect("a PNG");
    let (w, h) = (image.width() as usize, image.height() as usize);
    // The window is 1200 x 720 logical pixels (at any scale factor).
    assert_eq!(w * 720, h * 1200, "{w}x{h}");
    let data = image.data.as_deref().expect("pixels");
    assert_eq!(data.len(), w * h * 4, "RGBA8");

    let mut colours: HashMap<[u8; 3], usize> = HashMap::new();
    let mut saturated = 0;
    let mut panel_colours: HashMap<[u8; 3], usize> = HashMap::new();
    for (i, px) in data.chunks_exact(4).enumerate() {
        let rgb = [px[0], px[1], px[2]];
        *colours.entry(rgb).or_default() += 1;
        let (max, min) = (
            rgb.iter().max().copied().unwrap_or(0),
            rgb.iter().min().copied().unwrap_or(0),
        );
        if max - min > 80 {
            saturated += 1;
        }
        if i % w > w * 2 / 3 {
            *panel_colours.entry(rgb).or_default() += 1;
        }
    }
    let most = colours.values().max().copied().unwrap_or(0);
    println!(
        "{path}: {w}x{h}, {} colours, the commonest covers {:.0}%, {saturated} saturated pixels, {} colours in the panel",
        colours.len(),
        100.0 * most as f64 / (w * h) as f64,
        panel_colours.len()
    );
    assert!(colours.len() >= 64, "{} colours", colours.len());
    assert!(
        most * 10 < w * h * 7,
        "one colour covers most of the picture"
    );
    // Four avatars of 26 x 26 in saturated colours, and coloured names.
    assert!(saturated >= 4 * 26 * 26, "{saturated} saturated pixels");
    // Anti-aliased text in the chat panel.
    assert!(
        panel_colours.len() >= 32,
        "{} panel colours",
        panel_colours.len()
    );
}
