"""Stage 06 baselines on the exact rows and metrics of our method (see `run.run`).

pop (popularity), gru4rec and sasrec (item ids), and GRU4Rec over frozen item features:
gru4rec_image (image encoder), gru4rec_summary (sentence embeddings of stage-02 item summaries),
gru4rec_title (sentence embeddings of titles). Each baseline has fit(train, valid) -> info and
score(rows) -> one array of candidate scores per row; the neural ones share `train.fit`.
"""
