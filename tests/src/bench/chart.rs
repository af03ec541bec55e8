//! Each burst as a picture: nodes running again over time, one line per design, against
//! the line of EC2's RunInstances bound (5 at once, then 2 a second, after the longest
//! launch).

use std::path::Path;

use plotters::prelude::*;

/// One design's curve: its name, its colour, and the seconds at which each node ran again
/// (sorted).
pub struct Curve<'a> {
    pub design: &'a str,
    pub colour: RGBColor,
    pub back_at: &'a [f64],
}

pub fn draw(path: &Path, title: &str, nodes: usize, curves: &[Curve<'_>]) -> Result<(), String> {
    let end = curves.iter().filter_map(|c| c.back_at.last().copied()).fold(super::burst::bound_s(nodes), f64::max) * 1.05;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..(nodes as f64 * 1.05))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds after the reclaim")
        .y_desc("nodes running again")
        .draw()
        .map_err(|e| e.to_string())?;
    let bound = [(0.0, 0.0), (2.0, 0.0), (2.0, 5.0_f64.min(nodes as f64)), (super::burst::bound_s(nodes), nodes as f64), (end, nodes as f64)];
    chart
        .draw_series(LineSeries::new(bound, BLACK.stroke_width(1)))
        .map_err(|e| e.to_string())?
        .label("EC2's bound")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    for curve in curves {
        let colour = curve.colour;
        let points = std::iter::once((0.0, 0.0)).chain(curve.back_at.iter().enumerate().map(|(i, t)| (*t, (i + 1) as f64)));
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(curve.design)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).position(SeriesLabelPosition::LowerRight).draw().map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
