"""``dream3d compare``: two recipes on one prompt (by default SDS against VSD), or any two runs, side by side in one
offline HTML report.

Data flows one way, from the command down to the files; nothing below :mod:`~dream3d.compare.job` fits::

    job.py      the command: validate the input, fit the two recipes (or take two run folders), label the runs,
                then write_report
    report.py   write_report: figures of every run, media copied into the report folder, loss plots,
                summary.json (once) and report.html
    figures.py  the figures of one run (saturation, diversity, classifier figures, timings) and their definitions
    inputs.py   what the report reads from a run folder, made when missing: config, summary, exported meshes
                (dream3d.export.run.export_run), eval.json (dream3d.eval.evaluate_run), validation grids
    plots.py    loss curves drawn with PIL (axes, ticks, legend)
    html.py     render_html: the page, from summary.json alone
    errors.py   CompareError, ReportError

Import the submodule you need; this package imports nothing.
"""
