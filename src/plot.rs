//! Line charts as PNG for the study reports: one panel per model, a line per method, an
//! optional dashed reference level. Rendered with plotters and a font the binary carries, so
//! reports render on machines without fonts installed.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};

pub struct Panel {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    /// A dashed horizontal line: (label, y).
    pub reference: Option<(String, f64)>,
    /// (label, points) per line.
    pub lines: Vec<(String, Vec<(f64, f64)>)>,
}

/// The panels side by side, written to `path` as PNG.
pub fn line_panels(panels: &[Panel], path: &Path) -> Result<()> {
    const FONT: &str = "ui";
    plotters::style::register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT)
        .map_err(|_| Error::InvalidInput("the plot font does not load".into()))?;
    let (width, height) = (560 * panels.len().max(1) as u32, 460);
    let mut buffer = vec![0u8; (width * height * 3) as usize];
    let draw_error = |e: &dyn std::fmt::Display| Error::InvalidInput(format!("plot: {e}"));
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_error(&e))?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for (area, panel) in areas.iter().zip(panels) {
            let points = || panel.lines.iter().flat_map(|l| l.1.iter().copied());
            let ys = points()
                .map(|p| p.1)
                .chain(panel.reference.iter().map(|r| r.1));
            let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
            let x_hi = points().map(|p| p.0).fold(0.0, f64::max) * 1.05 + 1e-9;
            let pad = ((hi - lo) * 0.05).max(1e-6);
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, (FONT, 22))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d(0.0..x_hi, (lo - pad)..(hi + pad))
                .map_err(|e| draw_error(&e))?;
            chart
                .configure_mesh()
                .x_desc(&panel.x_desc)
                .y_desc(&panel.y_desc)
                .label_style((FONT, 14))
                .draw()
                .map_err(|e| draw_error(&e))?;
            if let Some((label, y)) = &panel.reference {
                chart
                    .draw_series(DashedLineSeries::new(
                        [(0.0, *y), (x_hi, *y)],
                        6,
                        4,
                        BLACK.into(),
                    ))
                    .map_err(|e| draw_error(&e))?
                    .label(label)
                    .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK));
            }
            for (i, (label, points)) in panel.lines.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                    .map_err(|e| draw_error(&e))?
                    .label(label)
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| draw_error(&e))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerLeft)
                .label_font((FONT, 13))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| draw_error(&e))?;
        }
        root.present().map_err(|e| draw_error(&e))?;
    }
    image::RgbImage::from_raw(width, height, buffer)
        .ok_or_else(|| Error::InvalidInput("plot: buffer size".into()))?
        .save(path)
        .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))
}
