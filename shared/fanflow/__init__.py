"""fanflow: Dify-style AI workflows, in one process or across a fleet of workers."""

__version__ = "0.1.0"
