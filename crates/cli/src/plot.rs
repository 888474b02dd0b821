//! Bits per byte against the number of neighbors, one line per task (the paper's figures),
//! as SVG and PNG. Text is drawn with the embedded DejaVu Sans, so no system fonts are needed.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::report::Summary;

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Writes `<stem>.svg` and `<stem>.png` (each via a temp file and a rename).
pub fn curves(summary: &Summary, stem: &Path) -> Result<()> {
    let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    let (svg_tmp, png_tmp) = (svg.with_extension("svg.tmp"), png.with_extension("tmp.png"));
    draw(SVGBackend::new(&svg_tmp, (800, 500)).into_drawing_area(), summary)?;
    draw(BitMapBackend::new(&png_tmp, (800, 500)).into_drawing_area(), summary)?;
    std::fs::rename(&svg_tmp, &svg)?;
    std::fs::rename(&png_tmp, &png)?;
    Ok(())
}

fn draw<B: DrawingBackend>(area: DrawingArea<B, plotters::coord::Shift>, s: &Summary) -> Result<()>
where
    B::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<B::ErrorType>| anyhow!("plotting: {e:?}");
    area.fill(&WHITE).map_err(err)?;
    let mut series: Vec<(String, Vec<f64>)> =
        s.tasks.iter().map(|(t, c)| (t.clone(), c.curve.iter().map(|m| m.bits_per_byte).collect())).collect();
    if let Some((label, curve)) = &s.pile_weighted {
        if s.tasks.len() > 1 {
            series.push((label.clone(), curve.iter().map(|m| m.bits_per_byte).collect()));
        }
    }
    let all = series.iter().flat_map(|(_, v)| v.iter().copied());
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let pad = ((hi - lo) * 0.08).max(0.02);
    let x_max = s.max_k.max(1) as f64;
    let mut chart = ChartBuilder::on(&area)
        .caption("TTT-NN: bits per byte vs. neighbors trained on", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, (lo - pad)..(hi + pad))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("neighbors (k)")
        .x_labels(s.max_k.clamp(2, 10) + 1)
        .x_label_formatter(&|x| format!("{}", x.round() as i64))
        .y_desc("bits per byte")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, (name, ys)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let points: Vec<(f64, f64)> = ys.iter().enumerate().map(|(k, &y)| (k as f64, y)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    area.present().map_err(err)?;
    Ok(())
}
