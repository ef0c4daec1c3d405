"""The feedback report: what clinicians did with the cards, per recommendation and safety rule, for the protocol's authors.

``figures`` reads the counts from the store (one query module for the command line and the service), ``charts``
draws them with matplotlib, ``writer`` renders the HTML page and the CSV files, and ``endpoint`` serves the page at
``/report`` behind the operator token. Only counts, protocol codes, action ids and week numbers go into a report.
"""
