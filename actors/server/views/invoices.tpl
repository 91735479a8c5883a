% rebase('layout.tpl', title=title, refresh=None)
<h1>Invoices</h1>
<div class="scroll"><table>
<tr><th>#</th><th>state</th><th>machine/slot</th><th>product</th><th class="num">items</th><th class="num">CAD</th><th class="num">sats due</th><th class="num">received</th><th class="num">owed back</th><th>opened (UTC)</th></tr>
% for i in rows:
<tr><td>{{i['invoice']}}</td><td><span class="status s-{{i['state']}}">{{i['state']}}</span></td><td>{{i['machine']}}/{{i['slot']}}</td><td>{{i['product']}}</td><td class="num">{{i['items']}}</td><td class="num">{{cad(i['price_cents'] * i['items'])}}</td><td class="num">{{'-' if i['due_sats'] is None else f"{i['due_sats']:,}"}}</td><td class="num">{{f"{i['received_sats']:,}"}}</td><td class="num">{{f"{i['refund_sats']:,}" if i['refund_sats'] else '-'}}</td><td>{{when(i['created'])}}</td></tr>
% end
% if not rows:
<tr><td colspan="10">no invoices</td></tr>
% end
</table></div>
<p class="pager">
% if before:
<a href="/invoices">newest</a>
% end
% if older:
<a href="/invoices?before={{older}}">older</a>
% end
</p>
