"""Backend runners behind one interface (:class:`odexport.runtime.base.Runner`)."""
