"""The images layer: each image once per run. References resolved and pulled under a
machine-wide lock (``cache``, ``records``, ``pull``), the archive for offline CI
(``archive``), pins (``lockfile``), and builds once per content key (``build``,
``context``, ``dockerfile``, ``dockerignore``)."""
