"""printouts package: print-ready sheets at true physical size (PDF + PNG + JSON sidecar)."""
from printouts.sheets import (  # noqa: F401
    Sheet,
    SheetConfig,
    SheetFiles,
    chart_sheet,
    check_dpi,
    default_chart_colors,
    glasses_sheet,
    load_perturbation,
    page_size_mm,
    patch_sheet,
    poster_sheet,
    rasterize_pdf,
    sticker_sheet,
)
