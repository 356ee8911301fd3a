"""PairRM's model (``DebertaV2PairRM``, keys and config fields as in llm-blender/PairRM-hf) and DeBERTa's
disentangled attention through ``scaled_dot_product_attention``, numerically equal to the eager one.

transformers' ``DisentangledSelfAttention`` materialises the (batch x heads x L x L) content scores, adds the
content-to-position and position-to-content terms, masks, runs softmax and multiplies by V: half a dozen passes
over L x L tensors per layer, which is why DeBERTa-v3 runs far below a GPU's peak. Here the relative-position
terms (the same numbers as transformers' ``disentangled_attention_bias``, computed with fewer L x L passes) become the
additive mask of one fused SDPA call, which computes Q K^T, the softmax and the product with V without writing
the scores out. Only the key padding is masked: a padding query then attends to the real keys instead of to
nothing, which changes padding outputs only; real tokens never attend to padding in either implementation.

``use_sdpa_attention(model)`` swaps the class of every attention module in place: parameters and checkpoint keys
are untouched, so it applies to a loaded ``DebertaV2Model`` (or anything holding one) and can be undone with
``use_sdpa_attention(model, False)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DebertaV2Config, DebertaV2Model, DebertaV2PreTrainedModel
from transformers.models.deberta_v2.modeling_deberta_v2 import (
    DisentangledSelfAttention,
    build_relative_position,
    scaled_size_sqrt,
)
from transformers.utils import ModelOutput


@dataclass
class PairRMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class DebertaV2PairRM(DebertaV2PreTrainedModel):
    """PairRM's model: a DeBERTa-v2/v3 encoder and an MLP head over [source ⊕ candidate] prefix-token states.

    ``logits`` = mean over tasks of head(src ⊕ cand1) - head(src ⊕ cand2): > 0 means candidate 1 is better.
    Parameter names (``pretrained_model.*``, ``head_layer.{1,4}.*``) and config fields (``n_tasks``, ``drop_out``,
    ``source_prefix_id``, ``cand1_prefix_id``, ``cand2_prefix_id``, ``cand_prefix_id``) match PairRM-hf.

    The prefix positions can be given (``source_positions``, ...; one per row); otherwise the first occurrence of
    each prefix id in a row is used. Rows missing a prefix raise ``ValueError``.
    """

    base_model_prefix = "pretrained_model"

    def __init__(self, config: DebertaV2Config) -> None:
        super().__init__(config)
        self.n_tasks = getattr(config, "n_tasks", 1)
        self.drop_out = getattr(config, "drop_out", 0.05)
        self.pretrained_model = DebertaV2Model(config)
        hidden = config.hidden_size
        self.head_layer = nn.Sequential(
            nn.Dropout(self.drop_out),
            nn.Linear(2 * hidden, hidden),
            nn.Tanh(),
            nn.Dropout(self.drop_out),
            nn.Linear(hidden, self.n_tasks),
        )
        self.post_init()

    def _prefix_positions(self, input_ids: torch.Tensor, name: str) -> torch.Tensor:
        token_id = getattr(self.config, f"{name}_prefix_id", None)
        if token_id is None:
            raise ValueError(f"the PairRM config has no `{name}_prefix_id`")
        hits = input_ids == token_id
        if not bool(hits.any(-1).all()):
            raise ValueError(f"every row of `input_ids` must contain the {name} prefix token id {token_id}")
        return hits.int().argmax(-1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        source_positions: torch.Tensor | None = None,
        cand1_positions: torch.Tensor | None = None,
        cand2_positions: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: object,
    ) -> PairRMOutput:
        """``labels`` (optional, 1.0 when candidate 1 is better) give a logistic loss on the logits."""
        hidden = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        if source_positions is None:
            source_positions = self._prefix_positions(input_ids, "source")
        if cand1_positions is None:
            cand1_positions = self._prefix_positions(input_ids, "cand1")
        if cand2_positions is None:
            cand2_positions = self._prefix_positions(input_ids, "cand2")
        source = hidden[rows, source_positions]
        left = self.head_layer(torch.cat([source, hidden[rows, cand1_positions]], dim=-1))
        right = self.head_layer(torch.cat([source, hidden[rows, cand2_positions]], dim=-1))
        logits = (left - right).mean(dim=-1)
        loss = None
        if labels is not None:
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.to(logits.device).float())
        return PairRMOutput(loss=loss, logits=logits)


class SdpaDisentangledSelfAttention(DisentangledSelfAttention):
    """``DisentangledSelfAttention`` whose forward runs one ``scaled_dot_product_attention`` call.

    Falls back to the eager forward when attention weights are requested or ``query_states`` differ from the
    hidden states (DeBERTa's enhanced mask decoder), the two cases SDPA cannot serve.
    """

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        output_attentions: bool = False,
        query_states: torch.Tensor | None = None,
        relative_pos: torch.Tensor | None = None,
        rel_embeddings: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if output_attentions or query_states is not None:
            return super().forward(
                hidden_states, attention_mask, output_attentions, query_states, relative_pos, rel_embeddings
            )
        batch, length, _ = hidden_states.shape
        heads = self.num_attention_heads
        query = self.transpose_for_scores(self.query_proj(hidden_states), heads)  # (batch*heads, L, d)
        key = self.transpose_for_scores(self.key_proj(hidden_states), heads)
        value = self.transpose_for_scores(self.value_proj(hidden_states), heads)
        scale_factor = 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)
        if self.relative_attention:
            bias = self._relative_bias(query, key, relative_pos, self.pos_dropout(rel_embeddings), scale_factor)
            bias = bias.view(batch, heads, length, length)
        else:
            bias = torch.zeros((batch, 1, 1, length), dtype=query.dtype, device=query.device)
        # The encoder's mask is (batch, 1, L, L) = real(query) * real(key): key k is real iff some query sees it.
        key_is_real = attention_mask.bool().any(dim=-2, keepdim=True) if attention_mask.dim() == 4 else attention_mask
        bias = bias.masked_fill(~key_is_real.view(batch, 1, 1, length), torch.finfo(query.dtype).min)
        context = nn.functional.scaled_dot_product_attention(
            query.view(batch, heads, length, -1),
            key.view(batch, heads, length, -1),
            value.view(batch, heads, length, -1),
            attn_mask=bias,
            dropout_p=self.dropout.p if self.training else 0.0,
            # The eager path's float32 sqrt (a CPU scalar: no device sync), so the scale is the same number.
            scale=1.0 / scaled_size_sqrt(query, scale_factor).item(),
        )
        return context.transpose(1, 2).reshape(batch, length, -1), None

    def _relative_bias(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        relative_pos: torch.Tensor | None,
        rel_embeddings: torch.Tensor,
        scale_factor: int,
    ) -> torch.Tensor:
        """transformers' ``disentangled_attention_bias`` with fewer passes over (batch*heads, L, L) tensors.

        The same numbers: each term is divided by the scale while it is still (batch*heads, L, 2 x span), before
        the gather (a gather only moves values), the position projections broadcast over the batch instead of
        being repeated, and the position-to-content term is gathered straight into (query, key) order instead of
        gathered as (key, query) and transposed. The two terms are then added once.
        """
        if relative_pos is None:
            relative_pos = build_relative_position(
                query, key, bucket_size=self.position_buckets, max_position=self.max_relative_positions
            )
        length = query.size(-2)
        if relative_pos.numel() != length * length or key.size(-2) != length:
            return self.disentangled_attention_bias(query, key, relative_pos, rel_embeddings, scale_factor)
        heads, span = self.num_attention_heads, self.pos_ebd_size
        rel = relative_pos.reshape(length, length).to(device=query.device, dtype=torch.long)
        rel_embeddings = rel_embeddings[: span * 2, :].unsqueeze(0)
        # (heads, 2 x span, d): the eager code's projections before `.repeat(batch)`.
        pos_key = pos_query = None
        if "c2p" in self.pos_att_type:
            proj = self.key_proj if self.share_att_key else self.pos_key_proj
            pos_key = self.transpose_for_scores(proj(rel_embeddings), heads)
        if "p2c" in self.pos_att_type:
            proj = self.query_proj if self.share_att_key else self.pos_query_proj
            pos_query = self.transpose_for_scores(proj(rel_embeddings), heads)
        batch_heads = query.size(0)
        grouped = (batch_heads // heads, heads, length, -1)
        bias = None
        if pos_key is not None:
            scale = scaled_size_sqrt(pos_key, scale_factor).to(dtype=query.dtype)
            c2p = torch.matmul(query.view(grouped), pos_key.transpose(-1, -2)).view(batch_heads, length, -1) / scale
            index = torch.clamp(rel + span, 0, span * 2 - 1)
            bias = torch.gather(c2p, dim=-1, index=index.expand(batch_heads, length, length))
        if pos_query is not None:
            scale = scaled_size_sqrt(pos_query, scale_factor).to(dtype=key.dtype)
            p2c = torch.matmul(key.view(grouped), pos_query.transpose(-1, -2)).view(batch_heads, length, -1) / scale
            # Eager: gather p2c[k, clamp(span - rel[k, q])] as (k, q), then transpose. Here: index (q, k) directly.
            index = torch.clamp(span - rel, 0, span * 2 - 1).transpose(0, 1)
            keys = torch.arange(length, device=query.device).expand(length, length)
            term = p2c[:, keys, index]
            bias = term if bias is None else bias.add_(term)
        return bias if bias is not None else torch.zeros_like(query[..., :1]).expand(batch_heads, length, length)


def use_sdpa_attention(model: nn.Module, enable: bool = True) -> int:
    """Switch every DeBERTa attention module under ``model`` to the SDPA forward (or back); returns how many."""
    target = SdpaDisentangledSelfAttention if enable else DisentangledSelfAttention
    count = 0
    for module in model.modules():
        if isinstance(module, DisentangledSelfAttention):
            module.__class__ = target
            count += 1
    return count
