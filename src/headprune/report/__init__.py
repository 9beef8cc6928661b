"""HTML report, Markdown tables and figures from a run's `summary.json` (dissertation Figs. 2-7, Tables 5-15).

The report only renders: every number it shows is in the summary, computed by the pipeline (and
recomputed by `verify`). Its parts: `tables` (a table in HTML and Markdown, how numbers are
written), `facts` (what every section reads), `figures`, the sections (`sections`, `orders`,
`comparisons`) and `page` (`write_report`, the list of sections)."""

from .figures import rank_matrix
from .page import write_report

__all__ = ["rank_matrix", "write_report"]
