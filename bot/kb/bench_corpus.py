# ruff: noqa: E501 - a table of passages: one row a line reads better than wrapped cells
"""A labelled support knowledge base for ``fmbot kb bench``: a home-appliance shop's catalogue,
error codes and policies in English and Russian, and questions with the passages that answer
them. Some questions are keyword-heavy (product and error codes), some paraphrase the passage,
some ask in the other language.

Product and error passages come from tables through templates, as a catalogue export would; the
policies are written out. Everything is made here, nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Passage:
    key: str  # what questions name as relevant
    heading: str
    text: str


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    relevant: frozenset[str]  # passage keys
    kind: str  # "keyword" (codes, names), "paraphrase" or "cross-language"


# code, name, category, two features, watts, capacity, kilograms, euros, warranty years
_PRODUCTS = (
    ("KX-2041", "Aria kettle", "electric kettle", "a stainless steel body", "keep-warm at 80 °C", 2200, "1.7 l", 1.2, 49, 2),
    ("KX-2077", "Aria Glass kettle", "electric kettle", "a borosilicate glass body", "five temperature presets", 2200, "1.5 l", 1.4, 69, 2),
    ("KX-3100", "Nord travel kettle", "electric kettle", "a folding handle", "dual voltage 110/230 V", 1000, "0.5 l", 0.6, 35, 1),
    ("RB-770", "Pilot robot vacuum", "robot vacuum cleaner", "lidar navigation", "a self-emptying dock", 45, "0.45 l dust bin", 3.6, 399, 2),
    ("RB-550", "Pilot Mini robot vacuum", "robot vacuum cleaner", "a gyroscope", "a wet mopping pad", 30, "0.3 l dust bin", 2.8, 229, 2),
    ("VC-900", "Storm cordless vacuum", "cordless stick vacuum", "a 60-minute battery", "a motorised pet brush", 350, "0.8 l dust bin", 2.5, 299, 2),
    ("BL-120", "Vortex blender", "countertop blender", "a 2-litre Tritan jar", "an ice-crushing program", 1200, "2 l", 4.1, 129, 3),
    ("BL-060", "Vortex To-Go blender", "personal blender", "two 600 ml bottles", "one-touch blending", 600, "0.6 l", 1.9, 59, 2),
    ("CM-310", "Barista coffee machine", "espresso machine", "a 15-bar pump", "a steam wand", 1450, "1.8 l water tank", 7.9, 349, 2),
    ("CM-450", "Barista Auto coffee machine", "bean-to-cup coffee machine", "a ceramic grinder", "an automatic milk system", 1500, "1.7 l water tank", 9.6, 649, 2),
    ("CM-205", "Capsa capsule machine", "capsule coffee machine", "a 19-bar pump", "a 30-second heat-up", 1260, "0.8 l water tank", 3.2, 99, 2),
    ("AP-550", "Breeze air purifier", "air purifier", "a HEPA H13 filter", "a PM2.5 sensor", 55, "rooms up to 40 m²", 6.3, 199, 2),
    ("AP-800", "Breeze Max air purifier", "air purifier", "a HEPA H13 and carbon filter", "Wi-Fi control from the app", 70, "rooms up to 70 m²", 8.8, 329, 2),
    ("HM-220", "Mist humidifier", "ultrasonic humidifier", "a 4-litre tank", "a built-in hygrometer", 25, "4 l", 2.1, 79, 1),
    ("HT-180", "Ember fan heater", "fan heater", "two heat settings", "tip-over protection", 1800, "rooms up to 20 m²", 1.6, 45, 1),
    ("HT-250", "Ember oil radiator", "oil-filled radiator", "nine fins", "a 24-hour timer", 2500, "rooms up to 25 m²", 10.5, 89, 2),
    ("IR-740", "Glide steam iron", "steam iron", "a ceramic soleplate", "anti-calc cleaning", 2600, "0.35 l", 1.4, 55, 2),
    ("IR-990", "Glide Station steam generator", "steam generator iron", "a 6-bar pressure boiler", "an auto-off after 8 minutes", 2400, "1.3 l", 4.9, 199, 2),
    ("TS-410", "Crisp toaster", "two-slice toaster", "wide slots", "a defrost and reheat button", 900, "2 slices", 1.3, 39, 1),
    ("MW-230", "Wave microwave", "microwave oven", "a grill element", "eight auto-cook programs", 800, "23 l", 12.0, 139, 2),
    ("SC-100", "Balance kitchen scale", "kitchen scale", "a tempered glass platform", "1 g precision", 0, "up to 5 kg", 0.8, 19, 1),
    ("SC-300", "Balance Body smart scale", "bathroom scale", "body-fat analysis", "Bluetooth sync with the app", 0, "up to 180 kg", 1.7, 49, 1),
    ("FR-600", "Crisp air fryer", "air fryer", "a 5.5-litre basket", "eight presets", 1700, "5.5 l", 5.2, 119, 2),
    ("JC-150", "Press slow juicer", "slow juicer", "a 60 rpm auger", "a reverse function", 150, "0.8 l jug", 4.4, 179, 3),
)  # fmt: skip

_CARE = {
    "electric kettle": "Descale it once a month with citric acid or half water, half vinegar; boil, leave for an hour, rinse twice.",
    "robot vacuum cleaner": "Empty the bin after each run, wash the filter monthly, cut hair off the main brush weekly and wipe the cliff sensors.",
    "cordless stick vacuum": "Empty the bin after each use, rinse the filter monthly and let it dry 24 hours before fitting it again.",
    "countertop blender": "Blend warm water with a drop of washing-up liquid for 30 seconds, rinse; the jar is dishwasher safe, the base is not.",
    "personal blender": "Rinse the bottles right after use; the blade unit is washed by hand and never soaked.",
    "espresso machine": "Rinse the group head daily, purge the steam wand after each use and descale every 200 cups.",
    "bean-to-cup coffee machine": "Run the rinse program daily, clean the milk system weekly and descale when the machine asks.",
    "capsule coffee machine": "Empty the capsule container daily and descale every three months with the shop's descaler.",
    "air purifier": "Vacuum the pre-filter every two weeks; replace the main filter when the filter light turns red, about every 12 months.",
    "ultrasonic humidifier": "Use distilled water to avoid white dust, empty the tank daily and clean the membrane weekly with a soft brush.",
    "fan heater": "Unplug it and dust the grilles monthly; never cover it or use it in a bathroom.",
    "oil-filled radiator": "Dust the fins with a dry cloth; the oil is sealed for life and is never refilled.",
    "steam iron": "Run the anti-calc function every two weeks and empty the tank after ironing.",
    "steam generator iron": "Rinse the boiler every 10 fillings through the drain plug, when the boiler is cold.",
    "two-slice toaster": "Empty the crumb tray weekly; never poke a knife into the slots.",
    "microwave oven": "Steam a bowl of water with lemon for five minutes, then wipe the cavity; clean the grill element only when cold.",
    "kitchen scale": "Wipe with a damp cloth; replace the CR2032 battery when the display shows Lo.",
    "bathroom scale": "Wipe the electrodes with a dry cloth; replace the four AAA batteries when the app warns.",
    "air fryer": "Wash the basket with warm soapy water after each use; the non-stick coating dislikes metal utensils.",
    "slow juicer": "Run water through it after each use and brush the strainer; dry the parts before storing them.",
}  # fmt: skip

# device code, error code, what it means, what to do
_ERRORS = (
    ("RB-770", "E01", "a wheel is stuck or hanging in the air", "lift the robot, clean the wheels and put it on a flat floor"),
    ("RB-770", "E05", "the bumper is jammed", "tap the bumper several times and remove any debris behind it"),
    ("RB-770", "E09", "the lidar cover is blocked", "remove what covers the laser tower and check that it spins freely"),
    ("RB-770", "E21", "the side brush is tangled", "unscrew the side brush, remove hair and thread, and fit it again"),
    ("RB-550", "E02", "the main brush is blocked", "open the brush cover, pull out the brush and cut off wrapped hair"),
    ("RB-550", "E14", "the battery is too hot to charge", "move the dock away from radiators and sunlight and wait 30 minutes"),
    ("CM-310", "E07", "the water tank is not detected", "take the tank out, dry its contacts and push it in firmly"),
    ("CM-310", "E12", "the boiler overheated", "switch the machine off for 20 minutes, then descale it"),
    ("CM-450", "E03", "the brewing unit is not in place", "open the side door, reinsert the brewing unit until it clicks"),
    ("CM-450", "E16", "the grinder is blocked", "switch off, empty the bean hopper and vacuum out the grinder chamber"),
    ("CM-450", "E31", "the milk system is clogged", "run the milk cleaning program with the cleaning tablet"),
    ("CM-205", "E04", "no water flows through the capsule", "descale the machine and check that the tank valve is not blocked"),
    ("AP-550", "F1", "the filter is missing or not seated", "open the back cover and turn the filter until the arrows align"),
    ("AP-550", "F3", "the PM2.5 sensor is dusty", "clean the sensor window with a dry cotton bud"),
    ("AP-800", "F2", "the filter has reached the end of its life", "fit a new FL-800 filter and hold the reset button for five seconds"),
    ("AP-800", "W1", "the purifier cannot join the Wi-Fi network", "use a 2.4 GHz network and keep the purifier within ten metres of the router"),
    ("HM-220", "E6", "the tank is empty or not seated", "fill the tank and seat it level on the base"),
    ("HT-250", "E8", "the thermostat sensor failed", "unplug the radiator and contact a service centre"),
    ("IR-990", "E1", "the boiler needs rinsing", "rinse the boiler through the drain plug when it is cold"),
    ("MW-230", "E-3", "the door switch is open", "close the door firmly; if the error stays, the door switch needs service"),
    ("FR-600", "E2", "the temperature sensor is open", "unplug the fryer for ten minutes; if the error returns, it needs service"),
    ("VC-900", "E10", "the battery is too cold", "let the vacuum warm up to room temperature before charging"),
    ("VC-900", "E11", "the motor is blocked", "empty the bin and clear the tube and brush of any blockage"),
    ("JC-150", "E5", "the lid is not locked", "turn the lid clockwise until the marks line up"),
    ("SC-300", "Err", "the weight is above the limit or the scale is on carpet", "weigh yourself on a hard floor"),
)  # fmt: skip

# The same codes told in Russian, as a Russian help centre would.
_ERRORS_RU = (
    ("RB-770", "E01", "колесо застряло или робот приподнят над полом", "поднимите робота, очистите колёса и поставьте его на ровный пол"),
    ("RB-770", "E21", "боковая щётка запуталась", "открутите боковую щётку, уберите волосы и нитки и установите её обратно"),
    ("RB-550", "E14", "аккумулятор слишком горячий для зарядки", "переставьте базу подальше от батарей и солнца и подождите 30 минут"),
    ("CM-310", "E07", "резервуар для воды не обнаружен", "выньте резервуар, протрите контакты и плотно вставьте его обратно"),
    ("CM-310", "E12", "бойлер перегрелся", "выключите кофемашину на 20 минут, затем удалите накипь"),
    ("CM-450", "E16", "кофемолка заблокирована", "выключите машину, освободите контейнер для зёрен и пропылесосьте камеру кофемолки"),
    ("AP-550", "F1", "фильтр не установлен или стоит неправильно", "откройте заднюю крышку и поверните фильтр до совпадения стрелок"),
    ("AP-800", "W1", "очиститель не подключается к Wi-Fi", "используйте сеть 2,4 ГГц и держите очиститель не дальше десяти метров от роутера"),
    ("HM-220", "E6", "резервуар пуст или стоит неровно", "наполните резервуар и ровно установите его на основание"),
    ("MW-230", "E-3", "дверца открыта или не закрыта до конца", "плотно закройте дверцу; если ошибка остаётся, нужен ремонт датчика дверцы"),
    ("FR-600", "E2", "обрыв датчика температуры", "отключите аэрогриль на десять минут; если ошибка повторяется, обратитесь в сервис"),
    ("VC-900", "E10", "аккумулятор слишком холодный", "дайте пылесосу согреться до комнатной температуры перед зарядкой"),
)  # fmt: skip

_POLICIES = (
    ("delivery-times", "Delivery", "Orders placed before 14:00 on a working day leave our warehouse the same day. Delivery takes one to three working days in Germany and three to six working days elsewhere in the EU."),
    ("delivery-cost", "Delivery > Cost", "Standard delivery costs 4.90 EUR and is free for orders over 50 EUR. Express delivery the next working day costs 12.90 EUR and is available for orders placed before 12:00."),
    ("delivery-large", "Delivery > Large items", "Radiators, coffee machines over 8 kg and microwave ovens are delivered by a freight carrier, who calls one day ahead to agree a two-hour window."),
    ("delivery-abroad", "Delivery > Outside the EU", "We ship to Switzerland, Norway and the United Kingdom. Customs duties and import VAT are paid by the recipient on delivery."),
    ("tracking", "Orders > Tracking", "As soon as the parcel leaves the warehouse you receive an email with a tracking link. In your account, Orders shows the status of every parcel."),
    ("order-change", "Orders > Changes", "An order can be changed or cancelled in your account until its status becomes Packed. After that, refuse the parcel or return it."),
    ("pickup", "Delivery > Pickup points", "You can collect your order for free at any of our 140 pickup points; the parcel waits there for seven days and you need the pickup code from the SMS."),
    ("returns-window", "Returns", "You may return any item within 30 days of delivery without giving a reason. The item must be complete, with its accessories and manual."),
    ("returns-how", "Returns > How to return", "Start the return in your account under Orders, print the prepaid label and drop the parcel at any pickup point. Returns are free of charge."),
    ("refunds", "Returns > Refunds", "We refund the purchase price and the original delivery cost within 14 days of receiving the return, to the payment method you used."),
    ("returns-used", "Returns > Used items", "Hygiene items such as toothbrush heads, and opened coffee descaler, cannot be returned once used. A used appliance may be refunded minus a deduction for wear."),
    ("warranty", "Warranty", "Every appliance carries the warranty stated on its product page, counted from the delivery date. Keep your invoice: it is the proof of purchase."),
    ("warranty-claim", "Warranty > Claims", "To claim under warranty, open a service request in your account with a photo or video of the fault. We collect the appliance for free and repair or replace it within 21 days."),
    ("warranty-exclusions", "Warranty > Exclusions", "The warranty does not cover limescale damage, broken glass, wear parts such as filters and brushes, or damage from using the appliance on the wrong voltage."),
    ("extended-warranty", "Warranty > Extended", "An extended warranty adds two or three years for 10% or 15% of the product price. It must be bought within 30 days of delivery."),
    ("payment-methods", "Payment", "We accept Visa, Mastercard, American Express, PayPal, Apple Pay, Google Pay and bank transfer. Cash on delivery is not available."),
    ("payment-instalments", "Payment > Instalments", "Orders over 200 EUR can be paid in 3, 6 or 12 monthly instalments without interest through our finance partner, subject to a credit check."),
    ("invoice", "Payment > Invoices", "The invoice is attached to the shipping email as a PDF and is always available in your account. For a company invoice, add the VAT number at checkout."),
    ("price-match", "Prices > Price match", "If you find the same item cheaper at a major online shop within 14 days of your purchase, we refund the difference; send us a link to the offer."),
    ("loyalty", "Loyalty programme", "Members collect one point per euro spent. 100 points are worth a 5 EUR voucher, and points expire after 24 months."),
    ("gift-cards", "Gift cards", "Gift cards from 10 to 500 EUR are valid for three years and can be used for several orders. They cannot be exchanged for cash."),
    ("spare-parts", "Spare parts", "Filters, brushes, jugs and other spare parts are sold in the Spare parts section; enter your product code to see the parts that fit."),
    ("recycling", "Recycling", "When we deliver a large appliance we take your old one away for free. Small appliances can be dropped in the recycling boxes at our pickup points."),
    ("installation", "Services > Installation", "For built-in appliances we offer installation by a certified technician for 79 EUR, booked at checkout."),
    ("account", "Account", "To reset your password, click Forgot password on the login page; the reset link is valid for one hour."),
    ("privacy", "Privacy", "We keep your order data for ten years because tax law requires it. You can download or delete the rest of your personal data in your account settings."),
    ("support-hours", "Contact", "Customer support answers by chat and phone from 8:00 to 20:00 on working days and from 10:00 to 16:00 on Saturdays. Emails are answered within one working day."),
    ("business", "Business customers", "Companies can order on account with 30 days payment terms after a credit check. Volume discounts start at ten units of one product."),
    ("damaged-parcel", "Delivery > Damaged parcels", "If a parcel arrives damaged, note it on the courier's scanner or refuse it, take photos and tell us within 48 hours; we send a replacement at once."),
    ("voltage", "Safety > Voltage", "All appliances are made for 230 V sockets. Using them on 110 V through a converter voids the warranty, except the KX-3100 travel kettle."),
)  # fmt: skip

_POLICIES_RU = (
    ("ru-delivery", "Доставка", "Заказы, оформленные до 14:00 в рабочий день, отправляются со склада в тот же день. По Москве курьер привозит заказ на следующий день, в регионы — за два–семь дней."),
    ("ru-delivery-cost", "Доставка > Стоимость", "Доставка стоит 390 рублей и бесплатна для заказов от 5000 рублей. Срочная доставка за три часа по Москве стоит 790 рублей."),
    ("ru-pickup", "Доставка > Самовывоз", "Заказ можно бесплатно забрать в любом из 600 пунктов выдачи. Посылка хранится пять дней; для получения нужен код из СМС."),
    ("ru-returns", "Возврат", "Товар надлежащего качества можно вернуть в течение 14 дней после получения, если сохранены товарный вид, упаковка и чек."),
    ("ru-refund", "Возврат > Деньги", "Деньги за возвращённый товар поступают на карту в течение десяти дней после того, как товар приехал на склад."),
    ("ru-warranty", "Гарантия", "Гарантийный срок указан на странице товара и отсчитывается со дня покупки. Для ремонта по гарантии нужен кассовый чек или номер заказа."),
    ("ru-warranty-claim", "Гарантия > Ремонт", "Неисправный прибор можно сдать в любой пункт выдачи: мы сами отвезём его в сервисный центр. Срок ремонта — до 45 дней."),
    ("ru-payment", "Оплата", "Оплатить заказ можно банковской картой, через СБП или наличными курьеру. Для юридических лиц доступна оплата по счёту."),
    ("ru-installments", "Оплата > Рассрочка", "Рассрочка без переплаты на 6 или 12 месяцев доступна для заказов от 10 000 рублей. Решение банка приходит за две минуты."),
    ("ru-receipt", "Оплата > Чек", "Электронный чек приходит на почту сразу после оплаты, а бумажный чек курьер отдаёт вместе с заказом."),
    ("ru-loyalty", "Бонусы", "За каждую покупку начисляется 3% бонусами. Бонусами можно оплатить до 30% стоимости следующего заказа; они сгорают через год."),
    ("ru-support", "Контакты", "Служба поддержки работает ежедневно с 9:00 до 21:00 по московскому времени: чат на сайте, телефон 8 800 555-35-35 и почта help@example.ru."),
    ("ru-damaged", "Доставка > Повреждения", "Если упаковка повреждена, вскройте посылку при курьере и откажитесь от неё; фото повреждений пришлите в чат в течение суток."),
    ("ru-order-change", "Заказы > Изменение", "Изменить адрес или отменить заказ можно в личном кабинете, пока он не передан в доставку."),
    ("ru-gift", "Подарочные сертификаты", "Сертификаты номиналом от 1000 до 50 000 рублей действуют год. Остаток можно потратить в следующих заказах, обменять на деньги нельзя."),
    ("ru-recycling", "Утилизация", "При доставке крупной техники курьер бесплатно забирает старый прибор на утилизацию, если заказать услугу при оформлении."),
    ("ru-descaling", "Уход > Накипь", "Удаляйте накипь из чайника раз в месяц: залейте раствор лимонной кислоты, вскипятите и оставьте на час, затем дважды прокипятите чистую воду."),
    ("ru-filter", "Уход > Фильтры", "Фильтр очистителя воздуха меняют примерно раз в год, когда индикатор фильтра загорается красным. Предфильтр пылесосят раз в две недели."),
)  # fmt: skip

_PRODUCTS_RU = {
    "KX-2041": "Чайник Aria (KX-2041) из нержавеющей стали объёмом 1,7 литра поддерживает температуру 80 °C. Мощность 2200 Вт, гарантия два года.",
    "RB-770": "Робот-пылесос Pilot (RB-770) строит карту квартиры лидаром и сам выгружает мусор в базу. Контейнер 0,45 литра, гарантия два года.",
    "CM-310": "Рожковая кофемашина Barista (CM-310) с помпой 15 бар и капучинатором. Резервуар для воды 1,8 литра.",
    "AP-550": "Очиститель воздуха Breeze (AP-550) с фильтром HEPA H13 и датчиком PM2.5 рассчитан на комнаты до 40 м².",
    "BL-120": "Блендер Vortex (BL-120) мощностью 1200 Вт с кувшином на 2 литра колет лёд и делает смузи. Гарантия три года.",
    "HM-220": "Ультразвуковой увлажнитель Mist (HM-220) с баком на 4 литра и встроенным гигрометром.",
    "FR-600": "Аэрогриль Crisp (FR-600) с корзиной 5,5 литра и восемью программами готовит почти без масла.",
    "VC-900": "Беспроводной пылесос Storm (VC-900) работает до 60 минут от аккумулятора и комплектуется турбощёткой для шерсти.",
}


def passages() -> list[Passage]:
    """Every passage of the shop's knowledge base (about 200), catalogue first."""
    out: list[Passage] = []
    for code, name, category, a, b, watts, capacity, kg, price, years in _PRODUCTS:
        heading = f"Catalogue > {name}"
        out.append(
            Passage(
                f"{code}-overview",
                heading,
                f"The {name} ({code}) is a {category} with {a} and {b}. It costs {price} EUR "
                f"and comes with a {years}-year warranty.",
            )
        )
        power = f"power {watts} W, " if watts else "battery powered, "
        out.append(
            Passage(
                f"{code}-specs",
                f"{heading} > Specifications",
                f"{code} specifications: {power}capacity {capacity}, weight {kg} kg.",
            )
        )
        out.append(Passage(f"{code}-care", f"{heading} > Care", f"{name}: {_CARE[category]}"))
    for device, code, meaning, action in _ERRORS:
        out.append(
            Passage(
                f"{device}-{code}",
                f"Troubleshooting > {device}",
                f"Error {code} on the {device} means {meaning}. To fix it, {action}.",
            )
        )
    for device, code, meaning, action in _ERRORS_RU:
        out.append(
            Passage(
                f"ru-{device}-{code}",
                f"Неисправности > {device}",
                f"Ошибка {code} на {device} означает, что {meaning}. Что делать: {action}.",
            )
        )
    for code, text in _PRODUCTS_RU.items():
        out.append(Passage(f"ru-{code}", "Каталог", text))
    out.extend(Passage(key, heading, text) for key, heading, text in _POLICIES + _POLICIES_RU)
    return out


def _q(text: str, kind: str, *relevant: str) -> Question:
    return Question(text, frozenset(relevant), kind)


QUESTIONS = (
    # Product and error codes: a customer reads them off the device.
    _q("RB-770 E21", "keyword", "RB-770-E21", "ru-RB-770-E21"),
    _q("What does error E05 on RB-770 mean?", "keyword", "RB-770-E05"),
    _q("CM-450 E16", "keyword", "CM-450-E16", "ru-CM-450-E16"),
    _q("CM-310 shows E12", "keyword", "CM-310-E12", "ru-CM-310-E12"),
    _q("AP-800 W1", "keyword", "AP-800-W1", "ru-AP-800-W1"),
    _q("AP-550 F3", "keyword", "AP-550-F3"),
    _q("error E14 RB-550", "keyword", "RB-550-E14", "ru-RB-550-E14"),
    _q("MW-230 E-3", "keyword", "MW-230-E-3", "ru-MW-230-E-3"),
    _q("VC-900 E11", "keyword", "VC-900-E11"),
    _q("JC-150 E5", "keyword", "JC-150-E5"),
    _q("KX-2077 price", "keyword", "KX-2077-overview"),
    _q("HT-250 specifications", "keyword", "HT-250-specs"),
    _q("IR-990 weight", "keyword", "IR-990-specs"),
    _q("SC-300 warranty", "keyword", "SC-300-overview"),
    _q("FL-800 filter", "keyword", "AP-800-F2"),
    _q("ошибка E07 CM-310", "keyword", "ru-CM-310-E07", "CM-310-E07"),
    _q("HM-220 E6 что делать", "keyword", "ru-HM-220-E6", "HM-220-E6"),
    _q("ошибка F1 AP-550", "keyword", "ru-AP-550-F1", "AP-550-F1"),
    _q("FR-600 ошибка E2", "keyword", "ru-FR-600-E2", "FR-600-E2"),
    _q("VC-900 E10 не заряжается", "keyword", "ru-VC-900-E10", "VC-900-E10"),
    # Paraphrases: the words differ from the passage's.
    _q("Can I send back a present I don't like?", "paraphrase", "returns-window"),
    _q("How soon do I get my money after returning something?", "paraphrase", "refunds"),
    _q("Is shipping free?", "paraphrase", "delivery-cost"),
    _q("My package came crushed, what now?", "paraphrase", "damaged-parcel"),
    _q("Can I pay in parts over a year?", "paraphrase", "payment-instalments"),
    _q("Do you take away my old fridge-sized appliance?", "paraphrase", "recycling"),
    _q("I forgot my login credentials", "paraphrase", "account"),
    _q("When can I call you on the weekend?", "paraphrase", "support-hours"),
    _q(
        "Is white powder around the humidifier normal and how do I prevent it?",
        "paraphrase",
        "HM-220-care",
    ),
    _q(
        "How do I get rid of limescale in my kettle?",
        "paraphrase",
        "KX-2041-care",
        "KX-2077-care",
        "KX-3100-care",
        "ru-descaling",
    ),
    _q(
        "The robot vacuum doesn't move, its wheel seems stuck",
        "paraphrase",
        "RB-770-E01",
        "ru-RB-770-E01",
    ),
    _q("Which kettle can I take to the USA?", "paraphrase", "KX-3100-overview", "voltage"),
    _q("Можно ли вернуть товар, если он просто не подошёл?", "paraphrase", "ru-returns"),
    _q("Когда вернут деньги за возврат?", "paraphrase", "ru-refund"),
    _q("Сколько стоит привезти заказ?", "paraphrase", "ru-delivery-cost"),
    _q("Можно ли купить в рассрочку?", "paraphrase", "ru-installments"),
    _q("Во сколько открывается поддержка?", "paraphrase", "ru-support"),
    _q("Коробка пришла мятая, что делать?", "paraphrase", "ru-damaged"),
    _q(
        "Как часто менять фильтр в очистителе воздуха?",
        "paraphrase",
        "ru-filter",
        "AP-550-care",
        "AP-800-care",
    ),
    _q("Сгорают ли бонусы?", "paraphrase", "ru-loyalty"),
    # The other language: Russian questions, English-only passages, and back.
    _q("Сколько дней идёт доставка по Европе?", "cross-language", "delivery-times"),
    _q(
        "Можно ли оплатить заказ частями?",
        "cross-language",
        "payment-instalments",
        "ru-installments",
    ),
    _q("Как продлить гарантию?", "cross-language", "extended-warranty"),
    _q("Вы отправляете заказы в Швейцарию?", "cross-language", "delivery-abroad"),
    _q("Как удалить мои персональные данные?", "cross-language", "privacy"),
    _q("Where can I buy a new brush for my vacuum?", "cross-language", "spare-parts"),
    _q("How long is a gift certificate valid in the Russian shop?", "cross-language", "ru-gift"),
    _q("How much bonus do I earn per purchase in rubles?", "cross-language", "ru-loyalty"),
)
