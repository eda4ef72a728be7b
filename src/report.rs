//! Outputs of the experiment examples: long-format CSV, log-scale line plots
//! as SVG (text is left to the viewer's fonts, so no system font is needed to
//! write them), number formatting for markdown tables, and progress bars.

use std::fmt::Write as _;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;

/// One named curve.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// `(x, y)` points; non-positive or non-finite `y` are left out of a log plot.
    pub points: Vec<(f64, f64)>,
}

/// Writes `method,step,loss` rows (one per point of every series).
pub fn write_csv(path: &Path, header: &str, series: &[Series]) -> std::io::Result<()> {
    let mut text = format!("{header}\n");
    for s in series {
        for (x, y) in &s.points {
            let _ = writeln!(text, "{},{},{:e}", s.name, x, y);
        }
    }
    std::fs::write(path, text)
}

/// Plots the series with a log-scale y axis into an SVG file.
pub fn plot_log_y(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), Box<dyn std::error::Error>> {
    let usable = |y: f64| y.is_finite() && y > 0.0;
    let points = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| usable(p.1));
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if y_min > y_max {
        (y_min, y_max) = (1.0, 10.0);
    }
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max, (y_min / 2.0..y_max * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| usable(p.1)).collect();
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

/// A number for a table: three significant digits, scientific outside `[0.01, 1e4)`.
pub fn sig3(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a != 0.0 && !(0.01..1e4).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len().max(2) - 1) as f64;
    (mean, var.sqrt())
}

/// Whether `v` lies strictly inside the range of a grid axis's `values`, so
/// that a search's winner has a worse neighbour on both sides; an axis with
/// a single value counts as inside (it was not searched).
pub fn strictly_inside(values: &[f64], v: f64) -> bool {
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| {
            (l.min(x), h.max(x))
        });
    lo == hi || (lo < v && v < hi)
}

/// The spread over seeds for a table: `-` for a single seed.
pub fn spread(std: f64, seeds: usize) -> String {
    if seeds < 2 {
        "-".into()
    } else {
        sig3(std)
    }
}

/// A progress bar showing position, elapsed time and ETA, with a message slot.
pub fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:28} {bar:36} {pos}/{len} {elapsed_precise} (eta {eta})")
            .expect("template"),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_svg_are_written() {
        let dir = std::env::temp_dir().join(format!("kradagrad-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let series = vec![
            Series {
                name: "a".into(),
                points: vec![(0.0, 10.0), (1.0, 1.0)],
            },
            Series {
                name: "b".into(),
                points: vec![(0.0, 5.0), (1.0, f64::NAN)],
            },
        ];
        write_csv(&dir.join("x.csv"), "method,step,loss", &series).unwrap();
        let csv = std::fs::read_to_string(dir.join("x.csv")).unwrap();
        assert_eq!(csv.lines().count(), 5);
        assert!(csv.starts_with("method,step,loss\na,0,1e1\n"), "{csv}");
        plot_log_y(&dir.join("x.svg"), "t", "step", "loss", &series).unwrap();
        let svg = std::fs::read_to_string(dir.join("x.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains(">\na\n</text>") && svg.contains("polyline"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn numbers_are_formatted_for_tables() {
        assert_eq!(sig3(2.01e7), "2.01e7");
        assert_eq!(sig3(387.4), "387");
        assert_eq!(sig3(16.54), "16.5");
        assert_eq!(sig3(1.134), "1.13");
        assert_eq!(sig3(0.0123), "0.012");
        assert_eq!(spread(0.5, 1), "-");
        assert_eq!(spread(0.5, 2), "0.500");
    }

    #[test]
    fn grid_winners_inside_or_on_the_edge() {
        assert!(strictly_inside(&[0.1, 0.3, 0.03], 0.1));
        assert!(!strictly_inside(&[0.1, 0.3, 0.03], 0.3));
        assert!(!strictly_inside(&[0.1, 0.3, 0.03], 0.03));
        assert!(strictly_inside(&[0.5], 0.5));
    }

    #[test]
    fn mean_and_sample_deviation() {
        assert_eq!(mean_std(&[2.0]), (2.0, 0.0));
        let (mean, std) = mean_std(&[1.0, 2.0, 3.0]);
        assert_eq!((mean, std), (2.0, 1.0));
    }
}
